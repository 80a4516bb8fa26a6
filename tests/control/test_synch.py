"""exploit.synch: a ready point is decided once every live member reported it; parked members wait in
Redis (state "waiting"), are decided together by whoever completes the round, or by the timer when
nobody did (a member failed, an arbiter died); each (member, seq) once; the decisions replay.

Driven in-process: a real Redis, real arbiters, ready events published by hand in a chosen order
(test_fleet_rules.py runs real processes).
"""

from __future__ import annotations

import pytest
from helpers import TOY, lineage_counts

from pbt_mq.config.parse import load_file
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.control.trim import drop_rounds
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, Member, MemberState
from pbt_mq.state.experiment import launch, load_config, pause, status, stop, unpause
from pbt_mq.state.finish import fail_member
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands

SETS = ["population.size=4", "population.initial=[]", "stop.steps=40", "ready.steps=4", "gc.enabled=false",
        "exploit.quantile=0.25", "exploit.synch=true", "worker.on_failure=fail"]


def setup(r, *sets: str):
    cfg = load_file(TOY, [*SETS, *sets])
    exp = launch(r, cfg, "file:///tmp/unused")
    return cfg, exp, Arbiter(r, "t1", block_ms=10, reap_interval_s=0), {c.member: c for c in take_commands(r)}


def state(r, exp: str, m: str) -> MemberState | None:
    return Member.read(r, Keys(exp).member(m), "state").state


@pytest.mark.parametrize("compare", ["step", "latest"])
def test_members_wait_for_the_round_and_are_decided_together_on_the_full_board(r, compare):
    cfg, exp, arb, cmds = setup(r, f"exploit.compare={compare}")
    for m, score in (("m000", 0.9), ("m001", 0.1), ("m002", 0.5)):
        publish(r, fake_event(cmds[m], score))
        arb.run(burst=True)
    assert [state(r, exp, m) for m in ("m000", "m001", "m002")] == [MemberState.WAITING] * 3
    assert take_commands(r) == [] and records(r, exp) == []  # nothing queued, nothing decided
    assert arb.stats["waiting"] == 3
    st = status(r, exp)
    assert st["round"] == {"at": 4, "waiting": ["m000", "m001", "m002"], "behind": ["m003"]}
    assert [m["state"] for m in st["members"]] == ["waiting", "waiting", "waiting", "queued"]
    publish(r, fake_event(cmds["m003"], 0.3))  # the last report completes the round
    arb.run(burst=True)
    recs = records(r, exp)
    assert sorted(rec.member for rec in recs) == ["m000", "m001", "m002", "m003"]
    assert all(rec.n == 4 and rec.step == 4 for rec in recs)  # everyone ranked on the complete board
    assert next(rec for rec in recs if rec.member == "m001").action is Action.EXPLOIT
    assert {c.member for c in take_commands(r)} == {"m000", "m001", "m002", "m003"}
    assert not r.exists(Keys(exp).parked) and not r.exists(Keys(exp).waiting) and status(r, exp)["round"] is None
    assert replay_decisions(load_config(r, exp), recs) == []


def test_a_failed_member_never_blocks_a_round_and_the_timer_finishes_it_after_a_crash(r):
    cfg, exp, arb, cmds = setup(r)
    for m in ("m000", "m001", "m002"):
        publish(r, fake_event(cmds[m], 0.5))
    arb.run(burst=True)
    fail_member(r, cfg, exp, "m003", 0, "boom")  # a worker failed it: no arbiter hears of it
    assert records(r, exp)[-1].action is Action.FAILED and take_commands(r) == []
    other = Arbiter(r, "t2", block_ms=10, reap_interval_s=0)  # a fresh replica (t1 died, say)
    other.step()  # its timer finds the complete round nobody decided
    assert {c.member for c in take_commands(r)} == {"m000", "m001", "m002"}
    assert other.stats["continue"] + other.stats["exploit"] == 3
    arb.step()  # the other replica finds nothing left to do: each (member, seq) is decided once
    assert max(lineage_counts(r, exp).values()) == 1


def test_no_member_starts_past_a_ready_point_before_every_live_member_reported_it(r):
    """Members report in a skewed order (the odd ones at half speed); every command queued must start
    at a ready point all live members have reported."""
    cfg, exp, arb, cmds = setup(r, "population.size=5", "stop.steps=32")
    reported = {m: 0 for m in cmds}
    queue = dict(cmds)
    for turn in range(300):
        for c in take_commands(r):
            assert c.step <= min(reported.values()), (c.member, c.step, reported)
            queue[c.member] = c
        if not queue:
            break
        for c in [c for m, c in sorted(queue.items()) if int(m[1:]) % 2 == 0 or turn % 2 == 0]:
            del queue[c.member]
            publish(r, fake_event(c, (c.hparams["h0"] + c.hparams["h1"]) * (c.until_step or 0)))
            reported[c.member] = c.until_step or 0
            arb.run(burst=True)
    recs = records(r, exp)
    assert {s["state"] for s in status(r, exp)["members"]} == {"done"}
    assert [rec for rec in recs if rec.action is Action.EXPLOIT] and replay_decisions(load_config(r, exp), recs) == []
    assert max(lineage_counts(r, exp).values()) == 1


@pytest.mark.parametrize("burn_in", [0, 8])
def test_a_replaced_member_rejoins_the_rounds_from_its_restart_point(r, burn_in):
    """With a donor (at the round's ready point) the replaced member has got there: the round completes at
    once. Restarted fresh (here: in its burn-in) it starts from step 0, and the round waits for it."""
    from pbt_mq.core.keys import job_id
    from pbt_mq.state.failure import give_up

    cfg, exp, arb, cmds = setup(r, "worker.on_failure=replace", f"exploit.burn_in_steps={burn_in}")
    for m in ("m001", "m002", "m003"):
        publish(r, fake_event(cmds[m], 0.5))
    arb.run(burst=True)
    give_up(r, cfg, cmds["m000"], job_id(exp, "m000", 0), "RuntimeError: boom")
    arb.run(burst=True)
    again = {c.member: c for c in take_commands(r)}
    if not burn_in:
        assert again["m000"].start is not None and again["m000"].step == 4 and set(again) == set(cmds)
        return
    assert set(again) == {"m000"} and again["m000"].start is None
    assert [state(r, exp, m) for m in ("m001", "m002", "m003")] == [MemberState.WAITING] * 3
    publish(r, fake_event(again["m000"], 0.4))  # the round at step 4 completes when it gets there
    arb.run(burst=True)
    assert {c.member for c in take_commands(r)} == {"m000", "m001", "m002", "m003"}
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


def test_a_paused_round_resumes_where_it_stood_and_an_ended_run_leaves_no_round_behind(r):
    """compare = latest: where members stand (``reached``) goes when the arbiter sees the run stop, is
    rebuilt from the members' scored steps when it runs again, and the round then completes as usual."""
    cfg, exp, arb, cmds = setup(r, "exploit.compare=latest")
    k = Keys(exp)
    arb.refresh()
    for m, score in (("m000", 0.9), ("m001", 0.1), ("m002", 0.5)):
        publish(r, fake_event(cmds[m], score))
        arb.run(burst=True)
    assert pause(r, exp, "its fleet stopped")
    arb.refresh()  # seen stopped: where members stood goes, the parked events stay
    assert not r.exists(k.reached) and r.hlen(k.parked) == 3
    assert unpause(r, exp)
    assert r.zrange(k.reached, 0, -1, withscores=True) == [(b"m003", 0.0), (b"m000", 4.0), (b"m001", 4.0),
                                                           (b"m002", 4.0)]
    assert drop_rounds(r, exp) == 0 and r.exists(k.reached)  # an arbiter that saw it stopped, too late: kept
    arb.refresh()
    arb.run(burst=True)  # its round timer too: m003 has not reported, so nothing is due
    assert [state(r, exp, m) for m in ("m000", "m001", "m002")] == [MemberState.WAITING] * 3 and not records(r, exp)
    publish(r, fake_event(cmds["m003"], 0.3))  # the round completes as if nothing had happened
    arb.run(burst=True)
    recs = records(r, exp)
    assert sorted(rec.member for rec in recs) == ["m000", "m001", "m002", "m003"] and all(rec.n == 4 for rec in recs)
    assert replay_decisions(load_config(r, exp), recs) == []
    assert stop(r, exp)
    arb.refresh()
    assert not r.exists(k.reached)


def test_a_member_replaced_before_a_pause_is_tracked_from_its_restart_point_on_resume(r):
    """m000 scored step 4, then its next segment failed for good and it restarted fresh (in its burn-in):
    on resume it stands at 0, not at its last scored step, so the round at step 8 still waits for it."""
    from pbt_mq.core.keys import job_id
    from pbt_mq.state.failure import give_up

    cfg, exp, arb, cmds = setup(r, "worker.on_failure=replace", "exploit.burn_in_steps=20", "exploit.compare=latest")
    k = Keys(exp)
    arb.refresh()
    for m in cmds:
        publish(r, fake_event(cmds[m], 0.5))
    arb.run(burst=True)
    nxt = {c.member: c for c in take_commands(r)}
    for m in ("m001", "m002", "m003"):
        publish(r, fake_event(nxt[m], 0.6))
    arb.run(burst=True)
    give_up(r, cfg, nxt["m000"], job_id(exp, "m000", nxt["m000"].seq), "RuntimeError: boom")
    arb.run(burst=True)
    (fresh,) = take_commands(r)
    assert fresh.member == "m000" and fresh.start is None and r.zscore(k.reached, "m000") == 0
    assert pause(r, exp, "its fleet stopped")
    arb.refresh()
    assert not r.exists(k.reached) and unpause(r, exp)
    assert r.zscore(k.reached, "m000") == 0 and r.zscore(k.reached, "m001") == 8
    arb.refresh()
    arb.run(burst=True)
    assert [state(r, exp, m) for m in ("m001", "m002", "m003")] == [MemberState.WAITING] * 3
