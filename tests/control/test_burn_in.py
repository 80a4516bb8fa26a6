"""exploit.burn_in_steps: before step N no member is exploited and none serves as a donor; after it the
rules run as usual, and every decision still replays from the log.

Driven in-process: a real Redis, the real arbiter, ready events published by hand (test_fleet_rules.py
runs the same on real processes).
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.config.reader import ConfigError
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.core.model import Action
from pbt_mq.state.experiment import launch, load_config
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands

BURN_IN = 24


def run_fake(r, *sets: str) -> str:
    """Members drift apart in step (the odd ones train at half speed); the scores separate them clearly."""
    cfg = load_file(TOY, ["population.size=6", "stop.steps=60", "ready.steps=4", "gc.enabled=false",
                          "exploit.quantile=0.25", f"exploit.burn_in_steps={BURN_IN}", *sets])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    waiting: dict = {}
    for turn in range(400):
        waiting.update({c.member: c for c in take_commands(r)})
        if not waiting:
            break
        for cmd in [c for m, c in sorted(waiting.items()) if int(m[1:]) % 2 == 0 or turn % 2 == 0]:
            del waiting[cmd.member]
            score = (cmd.hparams["h0"] + cmd.hparams["h1"]) * (cmd.until_step or 0) / 60 + int(cmd.member[1:]) * 1e-3
            publish(r, fake_event(cmd, score))
            arb.run(burst=True)
    return exp


@pytest.mark.parametrize("compare", ["step", "latest"])
def test_no_exploit_and_no_donor_before_the_burn_in(r, compare):
    exp = run_fake(r, f"exploit.compare={compare}")
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert exploits, "past the burn-in the rule must exploit"
    assert all(rec.step >= BURN_IN and rec.parent_step >= BURN_IN for rec in exploits), \
        [(rec.member, rec.step, rec.parent, rec.parent_step) for rec in exploits]
    early = [rec for rec in recs if rec.step < BURN_IN]
    assert early and {rec.action for rec in early} == {Action.CONTINUE}
    assert all(not rec.declined_donor for rec in early)
    assert replay_decisions(load_config(r, exp), recs) == []


def test_replay_refuses_an_exploit_logged_inside_the_burn_in(r):
    exp = run_fake(r, "exploit.compare=latest")
    recs = records(r, exp)
    early = next(rec for rec in recs if rec.action is Action.CONTINUE and rec.step < BURN_IN)
    forged = [dataclasses.replace(rec, declined_donor="m000") if rec is early else rec for rec in recs]
    problems = replay_decisions(load_config(r, exp), forged)
    assert len(problems) == 1 and "in the burn-in" in problems[0]


def test_burn_in_is_a_step_count_and_defaults_to_none():
    assert load_file(TOY).exploit.burn_in_steps == 0
    with pytest.raises(ConfigError, match="exploit.burn_in_steps: must be >= 0"):
        load_file(TOY, ["exploit.burn_in_steps=-1"])
    with pytest.raises(ConfigError, match="exploit.burn_in_steps: must be an integer"):
        load_file(TOY, ["exploit.burn_in_steps=1.5"])
