"""Plug-in rules: imported only from the allowlist, checked, run in Python inside the decision, replayed.

The rules are in tests/plugin_rules.py; the arbiter runs in-process on a real Redis
(tests/test_fleet_rules.py runs real pbt-arbiter processes with and without --plugins).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator

import pytest
from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.control.decide import Decider
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, DeadLetter, ExperimentState, MemberState, Meta
from pbt_mq.rules.base import ExploitSpec, ExploreContext, ExploreSpec
from pbt_mq.rules.plugins import PluginError, allow_plugins
from pbt_mq.rules.registry import RuleError, exploit_rule, explore_rule
from pbt_mq.state.experiment import launch, load_config, status
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands

MOD = "tests.plugin_rules"
RULES = [f"exploit.rule={MOD}:copy_the_best", f"explore.rule={MOD}:HalveOrDouble"]


@pytest.fixture
def allowed() -> Iterator[None]:
    allow_plugins([MOD])
    yield
    allow_plugins(None)


def run_fake(r, *sets: str, arb: Arbiter | None = None) -> str:
    cfg = load_file(TOY, ["population.size=4", "population.initial=[]", "stop.steps=40", "ready.steps=4",
                          "gc.enabled=false", *sets])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = arb or Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    for _ in range(100):
        cmds = take_commands(r)
        if not cmds:
            break
        for cmd in cmds:
            publish(r, fake_event(cmd, (cmd.hparams["h0"] + cmd.hparams["h1"]) * (cmd.until_step or 0)))
        arb.run(burst=True)
    return exp


def test_the_allowlist_decides_what_is_imported(allowed):
    spec = ExploitSpec(f"{MOD}:copy_the_best")
    assert exploit_rule(spec).lua is None  # a plug-in always runs in Python
    allow_plugins(["other.module"])
    with pytest.raises(PluginError, match=r"module 'tests.plugin_rules' is not on this process's plug-in allowlist "
                                          r"\(other.module\); allow it with `pbt-arbiter --plugins tests.plugin_rules`"):
        exploit_rule(ExploitSpec(f"{MOD}:copy_the_best", quantile=0.3))  # a new spec: built again, refused
    allow_plugins([MOD, "no_such_module_here"])
    with pytest.raises(PluginError, match="importing 'no_such_module_here' failed: ModuleNotFoundError"):
        exploit_rule(ExploitSpec("no_such_module_here:rule"))
    with pytest.raises(PluginError, match="has no attribute 'missing'"):
        exploit_rule(ExploitSpec(f"{MOD}:missing"))
    with pytest.raises(PluginError, match="a class must subclass pbt_mq.rules.base.ExploitRule"):
        exploit_rule(ExploitSpec(f"{MOD}:HalveOrDouble"))


def test_what_a_plug_in_returns_is_checked(allowed):
    board = [("m001", 2.0), ("m000", 1.0)]
    with pytest.raises(PluginError, match="returned 'm999': not None nor another member of the board"):
        exploit_rule(ExploitSpec(f"{MOD}:nobody")).choose(board, "m000", 1.0, random.Random(0))
    cfg = load_file(TOY)
    ctx = ExploreContext(cfg.spaces, 2, "m000", 4, cfg.higher_is_better)
    with pytest.raises(PluginError, match=r"returned h0=1000000000.0, outside hparams.h0"):
        explore_rule(ExploreSpec(f"{MOD}:outside")).explore({"h0": 0.5, "h1": 0.5}, ctx, random.Random(0))
    new, ops = explore_rule(ExploreSpec(f"{MOD}:HalveOrDouble")).explore({"h0": 0.5, "h1": 0.5}, ctx, random.Random(0))
    assert set(new) == {"h0", "h1"} and len(ops) == 2


def test_launch_checks_the_form_only():
    cfg = load_file(TOY, ["exploit.rule=some.module:anything"])  # not imported, not allowed here: fine
    assert cfg.exploit.rule == "some.module:anything"


def test_a_plug_in_drives_the_decisions_and_replay_reproduces_them(r, allowed):
    exp = run_fake(r, *RULES)
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert len(exploits) >= 3
    for rec in exploits:  # copy_the_best's donor is the best of the board it saw, and the board is recorded
        assert rec.parent == rec.leaderboard[0][0] and rec.member != rec.parent
        assert all("--(x0.5)-->" in op or "--(x2.0)-->" in op for op in rec.ops)  # HalveOrDouble's ops
    assert replay_decisions(load_config(r, exp), recs) == []
    flip = exploits[0]
    forged = [dataclasses.replace(rec, next_hparams={**rec.next_hparams, "h0": 0.123}) if rec is flip else rec
              for rec in recs]
    assert len(replay_decisions(load_config(r, exp), forged)) == 1
    allow_plugins([])
    with pytest.raises(PluginError, match="not on this process's plug-in allowlist"):
        replay_decisions(dataclasses.replace(load_config(r, exp), exploit=ExploitSpec(f"{MOD}:copy_the_best", 0.21)),
                         recs)


def test_an_error_inside_a_plug_in_dead_letters_the_event_with_the_error(r, allowed):
    cfg = load_file(TOY, ["population.size=2", "population.initial=[]", "stop.steps=40", f"exploit.rule={MOD}:raises"])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0, claim_idle_ms=1)
    for cmd in take_commands(r):
        publish(r, fake_event(cmd, 0.5))
    arb.run(burst=True)
    for _ in range(6):  # each claim is one more delivery; the fifth dead-letters it
        time.sleep(0.01)
        arb.reclaim()
    dead = [DeadLetter.decode(f) for _, f in r.xrange(Keys(exp).dead)]
    assert dead and all("RuntimeError: a bug in the plug-in" in d.reason for d in dead)
    st = status(r, exp)
    assert {m["state"] for m in st["members"]} == {str(MemberState.FAILED)}
    assert "a bug in the plug-in" in st["members"][0]["error"]


def test_an_arbiter_without_the_plug_in_leaves_the_experiment_and_fails_it_if_no_one_takes_it(r):
    allow_plugins([])
    try:
        cfg = load_file(TOY, ["population.size=2", *RULES])
        exp = launch(r, cfg, "file:///tmp/unused")
        arb = Arbiter(r, "picky", block_ms=10, reap_interval_s=0)
        arb.refresh()
        assert exp not in arb.configs  # it reads none of its events
        assert "not on this process's plug-in allowlist" in status(r, exp)["refused"]["picky"]
        for cmd in take_commands(r):
            publish(r, fake_event(cmd, 0.5))
        arb.refresh()
        assert Meta.read(r, Keys(exp).meta, "state").state is ExperimentState.RUNNING  # others may take them
        arb.refusals.grace_ms = 0  # (10 s or --claim-idle-ms by default)
        time.sleep(0.01)
        arb.refresh()
        meta = Meta.read(r, Keys(exp).meta, "state", "reason")
        assert meta.state is ExperimentState.FAILED
        assert meta.reason.startswith("no arbiter decided its events for 0 s; picky: exploit.rule "
                                      "'tests.plugin_rules:copy_the_best': module 'tests.plugin_rules' is not on"), meta
    finally:
        allow_plugins(None)


def test_a_plugin_reading_more_history_than_redis_keeps_is_refused_with_the_fix(allowed):
    """Live decisions read the history from Redis only; replay reads the archive too. A plug-in that
    wants more than ``lineage.redis_window`` would decide on less than its replay: refused, with the fix."""
    cfg = load_file(TOY, [f"explore.rule={MOD}:WantsHistory", "lineage.redis_window=1000"])
    with pytest.raises(RuleError, match=r"lineage.redis_window >= 10000"):
        Decider(cfg)
    Decider(load_file(TOY, [f"explore.rule={MOD}:WantsHistory", "lineage.redis_window=10000"]))
