"""worker.on_failure = "replace": a member whose segment failed for good restarts from a donor's checkpoint
with explored values, or fresh from the prior with a new seed; bounded; exactly once; replayable.

Driven in-process: a real Redis, the real arbiter, segments "run" by hand (test_fleet_rules.py runs
real workers whose trainable raises, and workers that die).
"""

from __future__ import annotations

import json

import pytest
from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.control.reaper import sweep
from pbt_mq.core.ids import member_seed, replacement_seed
from pbt_mq.core.keys import Keys, job_id
from pbt_mq.core.model import Action, ExperimentState, Member, MemberState, Meta
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.observe.export import build_schedule
from pbt_mq.observe.lineage import explain, format_lineage, target
from pbt_mq.state.experiment import launch, load_config
from pbt_mq.state.failure import give_up
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands
from pbt_mq.worker.loading import Loader

TB = "Traceback (most recent call last):\n  File \"x.py\", line 1, in train\nRuntimeError: boom"
SETS = ["population.size=4", "population.initial=[]", "stop.steps=40", "ready.steps=4", "gc.enabled=false",
        "exploit.quantile=0.25"]


def setup(r, *sets: str):
    cfg = load_file(TOY, [*SETS, *sets])
    exp = launch(r, cfg, "file:///tmp/unused")
    return cfg, exp, Arbiter(r, "t1", block_ms=10, reap_interval_s=0), {c.member: c for c in take_commands(r)}


def fail(r, cfg, cmd: SegmentCommand, suffix: str = "") -> str:
    return give_up(r, cfg, cmd, job_id(cmd.experiment, cmd.member, cmd.seq) + suffix, TB, "w1")


def test_a_first_segment_failing_with_no_checkpoint_anywhere_restarts_fresh_with_a_new_seed(r):
    cfg, exp, arb, cmds = setup(r)
    assert fail(r, cfg, cmds["m000"]) == "published"
    assert Member.read(r, Keys(exp).member("m000"), "state").state is MemberState.READY
    arb.run(burst=True)
    assert arb.stats["replaced"] == 1
    nxt = {c.member: c for c in take_commands(r)}["m000"]
    assert nxt.seq == 1 and nxt.start is None and nxt.step == 0 and nxt.why == "start"
    assert nxt.seed == replacement_seed(cfg.seed, "m000", 0) != member_seed(cfg.seed, "m000")
    assert nxt.hparams != cmds["m000"].hparams  # resampled from the prior
    rec = records(r, exp)[-1]
    assert rec.action is Action.REPLACED and rec.reason == TB and rec.seed == nxt.seed and not rec.parent
    assert Loader(r, "cpu", None).construct(cfg, nxt).seed == nxt.seed  # the worker builds it with that seed

    publish(r, fake_event(nxt, 0.5))  # the replacement trains; its chain exports with its own seed
    for m in ("m001", "m002", "m003"):
        publish(r, fake_event(cmds[m], 0.1))
    arb.run(burst=True)
    recs = records(r, exp)
    tgt = target(r, exp, "m000")
    segs = explain(recs, tgt["ckpt_key"])
    assert segs[0]["start"]["kind"] == "init" and segs[0]["start"]["seed"] == nxt.seed
    assert build_schedule(cfg, exp, tgt, segs)["seed"] == nxt.seed
    assert "segment failed (RuntimeError: boom): replaced by a fresh start" in format_lineage(segs, "q")
    assert replay_decisions(cfg, recs) == []


def test_a_failure_with_donors_restarts_from_the_top_with_explored_values(r):
    cfg, exp, arb, cmds = setup(r)
    for m, score in (("m001", 0.9), ("m002", 0.5), ("m003", 0.1)):
        publish(r, fake_event(cmds[m], score))
    arb.run(burst=True)
    fail(r, cfg, cmds["m000"])
    arb.run(burst=True)
    rec = records(r, exp)[-1]
    assert rec.action is Action.REPLACED and rec.parent == "m001" and rec.parent_step == 4
    assert rec.leaderboard == [("m001", 0.9), ("m002", 0.5), ("m003", 0.1)]  # the member itself is off it
    nxt = {c.member: c for c in take_commands(r)}["m000"]
    assert nxt.start is not None and nxt.start.key == rec.next_start_key and nxt.step == 4 and nxt.seed is None
    assert nxt.hparams == rec.next_hparams != cmds["m001"].hparams and rec.ops
    assert r.zscore(Keys(exp).scores, "m000") is None
    assert replay_decisions(cfg, records(r, exp)) == []
    forged = [rec.__class__(**{**rec.__dict__, "parent": "m003"}) if rec.action is Action.REPLACED else rec
              for rec in records(r, exp)]
    assert len(replay_decisions(cfg, forged)) == 1  # replay can tell


def test_a_donor_at_the_stop_step_is_declined_for_the_best_one_below_it(r):
    cfg, exp, arb, cmds = setup(r, "stop.steps=4")
    publish(r, fake_event(cmds["m001"], 0.9))  # m001 is done at the stop step
    arb.run(burst=True)
    fail(r, cfg, cmds["m000"])
    arb.run(burst=True)
    rec = records(r, exp)[-1]
    assert rec.action is Action.REPLACED and not rec.parent and rec.declined_donor == "m001"
    assert {c.member: c for c in take_commands(r)}["m000"].start is None  # nothing below the stop: fresh
    assert replay_decisions(cfg, records(r, exp)) == []


def test_replacements_in_a_row_are_bounded_and_a_trainable_that_always_raises_fails_the_run(r):
    cfg, exp, arb, cmds = setup(r, "worker.max_replacements=1", "population.size=2")
    for _ in range(2):  # replaced once, then failed
        for m in ("m000", "m001"):
            fail(r, cfg, cmds[m])
        arb.run(burst=True)
        cmds = {c.member: c for c in take_commands(r)} or cmds
    meta = Meta.read(r, Keys(exp).meta, "state", "reason")
    assert meta.state is ExperimentState.FAILED
    assert meta.reason.startswith("every member failed; m000: RuntimeError: boom"), meta.reason
    m0 = Member.read(r, Keys(exp).member("m000"))
    assert m0.state is MemberState.FAILED and "worker.max_replacements = 1" in m0.error and "boom" in m0.error
    assert [rec.action for rec in records(r, exp) if rec.member == "m000"] == [Action.REPLACED, Action.FAILED]


def test_failing_again_at_the_same_step_after_training_back_to_it_counts_in_a_row(r):
    """A trainable that always fails once it gets to some step: each fresh restart completes segments up to
    that step and fails there again. Those completed segments do not reset the count: the run still ends."""
    cfg, exp, arb, cmds = setup(r, "worker.max_replacements=1", "population.size=2")
    cmd = cmds["m000"]
    for _ in range(2):
        publish(r, fake_event(cmd, 0.3))  # 0 -> 4 trains
        arb.run(burst=True)
        cmd = {c.member: c for c in take_commands(r)}["m000"]
        assert cmd.step == 4
        fail(r, cfg, cmd)  # and the segment from 4 fails
        arb.run(burst=True)
        cmd = {c.member: c for c in take_commands(r)}.get("m000", cmd)
    m0 = Member.read(r, Keys(exp).member("m000"))
    assert m0.state is MemberState.FAILED and "1 replacements in a row without getting past" in m0.error
    assert [rec.action for rec in records(r, exp) if rec.member == "m000"] == \
        [Action.CONTINUE, Action.REPLACED, Action.CONTINUE, Action.FAILED]


def test_getting_past_the_failed_step_resets_the_count(r):
    cfg, exp, arb, cmds = setup(r, "worker.max_replacements=1", "population.size=2")
    fail(r, cfg, cmds["m000"])
    arb.run(burst=True)
    again = take_commands(r)[0]
    publish(r, fake_event(again, 0.3))  # the replacement completes a segment, past step 0 where it failed
    arb.run(burst=True)
    fail(r, cfg, take_commands(r)[0])  # a later failure (from step 4) is the first in a row again
    arb.run(burst=True)
    assert Member.read(r, Keys(exp).member("m000"), "state", "replaced").replaced == 1
    assert [rec.action for rec in records(r, exp) if rec.member == "m000"] == \
        [Action.REPLACED, Action.CONTINUE, Action.REPLACED]


def test_a_redelivered_failed_event_changes_nothing(r):
    cfg, exp, arb, cmds = setup(r)
    fail(r, cfg, cmds["m000"])
    entry_id, fields = r.xrange(Keys(exp).events)[0]
    arb.run(burst=True)
    assert arb.handle(exp, entry_id, fields) == "duplicate"
    assert sum(1 for rec in records(r, exp) if rec.action is Action.REPLACED) == 1
    assert fail(r, cfg, cmds["m000"]) == "moved on"  # the failed job is no longer the member's


def test_a_segment_that_keeps_killing_workers_is_replaced_by_the_reaper(r):
    cfg, exp, arb, cmds = setup(r, "worker.max_retries=1")
    k = Keys(exp)
    for _ in range(3):
        r.hset(k.member("m000"), mapping={"state": "running", "worker": "ghost", "started_ms": 0})
        sweep(r, exp, cfg, grace_ms=0)
        take_commands(r)
    assert r.hget(k.member("m000"), "state") == b"ready" and r.xlen(k.events) == 1
    arb.run(burst=True)
    rec = records(r, exp)[-1]
    assert rec.action is Action.REPLACED and "stopped heartbeating; gave up after 2 requeues" in rec.reason
    assert r.hget(k.member("m000"), "state") == b"queued" and r.hget(k.member("m000"), "seq") == b"1"


def test_on_failure_fail_keeps_the_old_behaviour_and_older_experiments_keep_it(r):
    cfg, exp, arb, cmds = setup(r, "worker.on_failure=fail")
    assert fail(r, cfg, cmds["m000"]) == "failed" and r.xlen(Keys(exp).events) == 0
    assert r.hget(Keys(exp).member("m000"), "state") == b"failed"
    cfg2, exp2, _, _ = setup(r)
    assert cfg2.worker.on_failure == "replace"
    r.hset(Keys(exp2).meta, "schema", 2)  # launched by release 2, before "replace" was the default
    assert load_config(r, exp2).worker.on_failure == "fail"
    raw = json.loads(r.hget(Keys(exp2).meta, "config"))
    assert "on_failure" not in raw.get("worker", {})


@pytest.mark.parametrize("value", ["retry", 1])
def test_on_failure_takes_replace_or_fail(value):
    from pbt_mq.config.reader import ConfigError

    with pytest.raises(ConfigError, match="worker.on_failure: must be one of replace, fail"):
        load_file(TOY, [f"worker.on_failure={value}"])
