"""exploit.window in decide.lua and in rules.window must agree to the bit: the board is ranked on the
script's means and replay re-derives decisions from them."""

from __future__ import annotations

import json
import math
import random

from test_decide_parity import FixedU

from pbt_mq.broker.scripts import call
from pbt_mq.control.decide import Reply
from pbt_mq.core.keys import Keys
from pbt_mq.rules import window
from pbt_mq.rules.base import ExploitSpec
from pbt_mq.rules.registry import exploit

K = Keys("wparity")


def decide(r, member: str, seq: int, score: float, k: int, rule: str = "none", u: float = 0.0,
           quantile: float = 0.25) -> Reply:
    finite = math.isfinite(score)
    return Reply.parse(call(r, "decide", [K.member(member), K.scores, K.ckpts, K.meta, K.scores, K.boards, K.reached,
                                          K.windows], [
        member, seq, repr(score) if finite else "nan", int(finite), json.dumps({"key": f"{member}/{seq}"}),
        rule, quantile, repr(u), 64, "strict", "", 0, seq, "", k,
    ]))


def fresh(r, members) -> None:
    r.delete(K.scores, K.ckpts, K.meta, K.boards, K.reached, K.windows, *(K.member(m) for m in members))
    r.hset(K.meta, "state", "running")
    for m in members:
        r.hset(K.member(m), mapping={"seq": 0, "state": "ready"})


def test_the_script_keeps_each_window_as_rules_window_does(r):
    rng = random.Random(3)
    for k in (2, 3, 5):
        fresh(r, ["m0"])
        start: list[float] = []
        for seq in range(12):
            score = rng.choice([rng.gauss(0, 1), rng.uniform(-1e6, 1e6), 1 / 3, 0.1, 1e-300])
            r.hset(K.member("m0"), "seq", seq)
            reply = decide(r, "m0", seq, score, k)
            kept, mean = window.extend(start, score, k)
            assert window.parse(reply.own_window) == kept and r.hget(K.windows, "m0").decode() == reply.own_window
            assert r.zscore(K.scores, "m0") == mean  # the leaderboard holds the mean, to the bit
            start = kept
            r.hset(K.member("m0"), "window", reply.own_window)  # what the commit writes for a continue


def test_junk_written_into_a_window_is_skipped_not_an_error(r):
    fresh(r, ["m0"])
    r.hset(K.member("m0"), "window", "1 abc nan 3 inf -inf 0x")
    reply = decide(r, "m0", 0, 5.0, 4)
    assert window.parse(reply.own_window) == [1.0, 3.0, 5.0] and r.zscore(K.scores, "m0") == 3.0


def test_a_nan_score_leaves_the_board_and_its_window(r):
    fresh(r, ["m0"])
    r.hset(K.member("m0"), "window", "1 2")
    decide(r, "m0", 0, math.nan, 3)
    assert r.hget(K.windows, "m0") is None and r.zscore(K.scores, "m0") is None


def test_donors_come_with_their_window_and_the_rule_ranks_on_means(r):
    """Random boards of windows: decide.lua's truncation donor equals the pure rule's on the means."""
    rng = random.Random(11)
    exploits = 0
    for trial in range(150):
        k = rng.randint(2, 4)
        members = [f"m{i:02d}" for i in range(rng.randint(2, 8))]
        fresh(r, members)
        windows = {}
        for m in members:  # each other member's window as the script would have left it
            values = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(rng.randint(1, k))]
            windows[m] = values
            total = 0.0
            for v in values:
                total += v
            r.zadd(K.scores, {m: total / len(values)})
            r.hset(K.ckpts, m, json.dumps({"key": m}))
            r.hset(K.windows, m, window.encode(values))
        member = rng.choice(members)
        start = windows[member][:-1]
        score = rng.choice([0.0, 1.0, 2.0, rng.random()])
        r.hset(K.member(member), "window", window.encode(start))
        u = rng.random()
        reply = decide(r, member, 0, score, k, "truncation", u, 0.5)
        _, own = window.extend(start, score, k)
        board = [(m, own if m == member else r.zscore(K.scores, m)) for m in members]
        spec = ExploitSpec("truncation", 0.5, "strict")
        pure = exploit(board, member, own, spec, FixedU(u))
        assert (reply.donor or None) == pure, (trial, board, member)
        if pure:
            exploits += 1
            assert window.parse(reply.donor_window) == windows[pure]
    assert exploits > 20


def test_a_donor_window_of_junk_bytes_reaches_the_arbiter_cleaned(r):
    """Bytes written into pbt:{EXP}:windows by hand are no number and no text: the reply drops them."""
    fresh(r, ["m0", "m1"])
    r.zadd(K.scores, {"m1": 9.0})
    r.hset(K.ckpts, "m1", json.dumps({"key": "m1"}))
    r.hset(K.windows, "m1", b"\xff\xfe 8 \x00 10")
    reply = decide(r, "m0", 0, 1.0, 3, "truncation", 0.0, 0.5)
    assert reply.donor == "m1" and window.parse(reply.donor_window) == [8.0, 10.0]
