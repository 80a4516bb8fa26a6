"""exploit.compare: a member is ranked against the others' scores at its own ready point ("step", the
default), never against older scores of members that have not reached it, and never handed a donor
checkpoint older than the step it reported; "latest" keeps ranking on everyone's last score.

Driven in-process: a real Redis, the real arbiter, ready events published by hand in a chosen order.
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.state.experiment import launch, load_config, stop
from pbt_mq.state.finish import fail_member
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands

SETS = ["population.size=4", "population.initial=[]", "stop.steps=40", "exploit.rule=truncation",
        "exploit.quantile=0.25", "exploit.ties=strict", "gc.enabled=false"]


def decide(r, arb: Arbiter, cmd: SegmentCommand, score: float, train_s: float = 0.0) -> None:
    publish(r, dataclasses.replace(fake_event(cmd, score), train_s=train_s))
    arb.run(burst=True)


def the_shift(r, compare: str, ready: str = "ready={steps=4}") -> tuple[str, list, dict]:
    """Everyone reports 0.5 at the first ready point (a tie: no exploit); then the data shift: m000
    reaches the second one first and scores 0.1, m001 0.2, m002 0.05, while m003 lags behind."""
    cfg = load_file(TOY, [*SETS, ready, f"exploit.compare={compare}"])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    for cmd in take_commands(r):
        decide(r, arb, cmd, 0.5, train_s=1.0)
    nxt = {c.member: c for c in take_commands(r)}
    for m, score in (("m000", 0.1), ("m001", 0.2), ("m002", 0.05)):
        decide(r, arb, nxt[m], score, train_s=2.0)
    return exp, [rec for rec in records(r, exp) if rec.seq == 1], nxt


def test_a_member_first_past_the_shift_is_ranked_only_against_those_who_reached_it(r):
    exp, (m0, m1, m2), _ = the_shift(r, "step")
    assert (m0.member, m0.action, m0.n, m0.board, m0.board_at) == ("m000", Action.CONTINUE, 1, "step", 8)
    assert (m1.member, m1.action, m1.n) == ("m001", Action.CONTINUE, 2)  # better than m000 at step 8
    assert (m2.member, m2.action, m2.parent) == ("m002", Action.EXPLOIT, "m001")  # the bottom of step 8
    assert m2.parent_step >= m2.step == 8  # never a rewind to before the shift
    assert m2.leaderboard == [("m001", 0.2), ("m000", 0.1), ("m002", 0.05)]  # m003, at step 4, is not on it
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


def test_latest_ranks_against_older_scores_and_rewinds_past_the_shift(r):
    exp, (m0, _, _), _ = the_shift(r, "latest")
    assert m0.action is Action.EXPLOIT and m0.board == "latest" and m0.n == 4
    assert m0.parent_step == 4 < m0.step == 8  # the rewind compare = "step" exists to prevent
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


def test_with_ready_by_time_the_boards_are_train_time_periods(r):
    exp, (m0, m1, m2), _ = the_shift(r, "step", ready="ready={seconds=1.0}")
    assert (m0.board, m0.board_at, m0.n) == ("time", 2, 1)
    assert m2.action is Action.EXPLOIT and m2.parent == "m001" and m2.leaderboard[0] == ("m001", 0.2)
    nxt = {c.member: c for c in take_commands(r)}
    assert nxt["m002"].train_s == 2.0  # the donor's training time came with its checkpoint


def test_a_donor_whose_latest_score_is_not_finite_is_declined(r):
    cfg = load_file(TOY, [*SETS, "ready.steps=4"])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    first = {c.member: c for c in take_commands(r)}
    for m, score in (("m000", 0.9), ("m001", 0.5), ("m002", 0.4), ("m003", 0.1)):
        decide(r, arb, first[m], score)
    recs = [rec for rec in records(r, exp) if rec.member == "m003"]
    assert recs[-1].action is Action.EXPLOIT and recs[-1].parent == "m000"
    nxt = {c.member: c for c in take_commands(r)}
    decide(r, arb, nxt["m000"], float("nan"))  # its next score diverged: no checkpoint to give any more
    decide(r, arb, nxt["m001"], 0.5)
    decide(r, arb, nxt["m002"], 0.4)
    k = Keys(exp)
    assert r.zscore(k.board(8), "m000") is None and r.hget(k.ckpts, "m000") is None
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


def test_a_failed_member_leaves_every_board_and_is_no_donor(r):
    exp, _, nxt = the_shift(r, "step")
    k = Keys(exp)
    cfg = load_config(r, exp)
    assert r.zscore(k.board(4), "m001") is not None and r.zscore(k.board(8), "m001") is not None
    assert fail_member(r, cfg, exp, "m001", 2, "its worker's process died") is True
    assert r.zscore(k.board(4), "m001") is None and r.zscore(k.board(8), "m001") is None
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    decide(r, arb, nxt["m003"], 0.01)  # the bottom at step 8: exploits m000, the best left, not m001
    m3 = [rec for rec in records(r, exp) if rec.member == "m003"][-1]
    assert m3.action is Action.EXPLOIT and m3.parent == "m000"
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


def test_boards_are_trimmed_once_every_live_member_passed_and_dropped_at_the_end(r):
    exp, _, nxt = the_shift(r, "step")
    k = Keys(exp)
    arb = Arbiter(r, "t1", block_ms=10)
    arb.refresh()
    arb.maintenance.trim_boards(arb.configs)
    assert r.exists(k.board(4)) and r.exists(k.board(8))  # m003 is still at step 4
    decide(r, arb, nxt["m003"], 0.3)
    arb.maintenance.trim_boards(arb.configs)
    assert not r.exists(k.board(4)) and r.exists(k.board(8)) and r.zrange(k.boards, 0, -1) == [b"8"]
    stop(r, exp)
    arb.refresh()  # the arbiter sees it ended: its boards go
    assert not r.exists(k.board(8)) and not r.exists(k.boards) and not r.exists(k.reached)


@pytest.mark.parametrize("compare", ["step", "latest"])
def test_a_longer_run_replays_and_step_never_rewinds(r, compare):
    cfg = load_file(TOY, ["population.size=6", "stop.steps=60", "ready.steps=4", f"exploit.compare={compare}"])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    tick = 0
    for _ in range(200):
        cmds = take_commands(r)
        if not cmds:
            break
        for cmd in cmds[::2] + cmds[1::2]:  # interleaved: members drift apart in step
            tick += 1
            shift = 0.0 if (cmd.until_step or 0) < 32 else -1.0  # everyone's score drops at step 32
            decide(r, arb, cmd, shift + (cmd.hparams["h0"] + cmd.hparams["h1"]) * (cmd.until_step or 0) / 60
                   + (tick % 7) * 1e-3)
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert exploits and replay_decisions(load_config(r, exp), recs) == []
    if compare == "step":
        assert all(rec.parent_step >= rec.step for rec in exploits)
        assert all(rec.board == "step" for rec in recs if rec.action is not Action.FAILED)
        assert all(rec.n <= 6 for rec in recs if rec.n is not None)


def test_an_experiment_of_the_previous_release_keeps_ranking_on_latest(r):
    cfg = load_file(TOY, SETS + ["ready.steps=4"])
    exp = launch(r, cfg, "file:///tmp/unused")
    r.hdel(Keys(exp).meta, "schema")  # as release 1 wrote it
    assert load_config(r, exp).exploit.compare == "latest"
    assert cfg.exploit.compare == "step"  # this release's default
