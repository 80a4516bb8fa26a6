"""decide.lua and rules.exploit must agree on every board: that is what makes decisions replayable."""

from __future__ import annotations

import json
import math
import random

import pytest

from pbt_mq.broker.scripts import call
from pbt_mq.core.keys import Keys
from pbt_mq.rules.base import ExploitSpec
from pbt_mq.rules.registry import exploit


def lua_donor(r, board: dict[str, float], member: str, own: float, spec: ExploitSpec, u: float,
              compare: str = "latest") -> str | None:
    """decide.lua's donor on ``board``: the leaderboard itself (compare = latest), or a step's board
    (compare = step) while the leaderboard holds other, misleading scores."""
    k = Keys("parity")
    ranked_on = k.scores if compare == "latest" else k.board(7)
    r.delete(k.scores, k.ckpts, k.member(member), k.meta, k.board(7), k.boards, k.reached)
    r.hset(k.meta, "state", "running")
    r.hset(k.member(member), mapping={"seq": 0, "state": "ready"})
    for m, s in board.items():
        if m != member and math.isfinite(s):
            r.zadd(ranked_on, {m: s})
            r.hset(k.ckpts, m, json.dumps({"key": m}))
            if compare == "step":
                r.zadd(k.scores, {m: -s})  # their latest scores, reversed: ranking on them would differ
    finite = math.isfinite(own)
    reply = call(r, "decide", [k.member(member), k.scores, k.ckpts, k.meta, ranked_on, k.boards, k.reached], [
        member, 0, repr(own) if finite else "nan", int(finite), json.dumps({"key": member}),
        spec.rule, spec.quantile, repr(u), 0, spec.ties, "" if compare == "latest" else 7, 0, 7, "",
    ])
    if compare == "step" and finite:
        assert r.zscore(k.board(7), member) == own and r.zscore(k.reached, member) == 7
    return reply[6].decode() or None


class FixedU(random.Random):
    """An rng whose first draw is known, so the script gets the same u as the pure rule."""

    def __init__(self, u: float):
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize("compare", ["latest", "step"])
@pytest.mark.parametrize("ties", ["strict", "rank", "random"])
@pytest.mark.parametrize("rule", ["truncation", "tournament"])
def test_script_and_pure_rule_pick_the_same_donor(r, rule, ties, compare):
    rng = random.Random(f"{rule}/{ties}")
    agree = exploits = 0
    for _ in range(300):
        n = rng.randint(1, 12)
        values = [0.0, 1.0, 2.0, 0.5, math.nan, math.inf, -1.0]  # few values: many ties
        board = {f"m{i:02d}": rng.choice(values) for i in range(n)}
        member = rng.choice(list(board))
        own = board[member]
        spec = ExploitSpec(rule, rng.choice([0.2, 0.25, 0.5]), ties)
        u = rng.random()
        pure = exploit(list(board.items()), member, own, spec, FixedU(u))
        assert lua_donor(r, board, member, own, spec, u, compare) == pure, (board, member, spec, u)
        agree += 1
        exploits += pure is not None
    assert agree == 300 and exploits > 30  # the boards exercised both outcomes


def test_rank_ties_let_symmetric_members_exploit_but_strict_never_does():
    board = [("m000", 0.5), ("m001", 0.5)]
    strict = ExploitSpec("truncation", 0.2, "strict")
    rank = ExploitSpec("truncation", 0.2, "rank")
    assert exploit(board, "m000", 0.5, strict, random.Random(0)) is None
    assert exploit(board, "m000", 0.5, rank, random.Random(0)) == "m001"
    assert exploit(board, "m001", 0.5, rank, random.Random(0)) is None  # the higher-ranked one keeps going


def test_random_ties_are_symmetric_and_drawn_from_u():
    """ties = "random": which of two tied members copies the other is a fair draw from u, the
    same in the script as in the pure rule; strictly better and worse scores are unaffected."""
    board = [("m000", 0.5), ("m001", 0.5)]
    spec = ExploitSpec("truncation", 0.2, "random")
    for member, other in (("m000", "m001"), ("m001", "m000")):
        picks = [exploit(board, member, 0.5, spec, FixedU(u)) for u in (0.1, 0.3, 0.6, 0.9)]
        assert picks == [None, None, other, other]  # u * 2 = j + rest: j = 1 puts the other above
    tournament = ExploitSpec("tournament", 0.2, "random")
    assert [exploit(board, "m000", 0.5, tournament, FixedU(u)) for u in (0.2, 0.7)] == ["m001", None]
    assert exploit([("a", 1.0), ("b", 2.0)], "a", 1.0, spec, FixedU(0.1)) == "b"  # no tie: strictly better
    assert exploit([("a", 1.0), ("b", 2.0)], "b", 2.0, spec, FixedU(0.9)) is None
    seen = {exploit(board, "m001", 0.5, spec, random.Random(s)) for s in range(40)}
    assert seen == {None, "m000"}  # the larger id copies too, unlike ties = "rank"


def test_random_ties_in_the_script_follow_the_draw(r):
    board = {"m000": 0.5, "m001": 0.5, "m002": 0.5, "m003": 0.5, "m004": 1.0}
    spec = ExploitSpec("truncation", 0.5, "random")  # n = 5: k = 2
    for member in board:
        if member == "m004":
            continue
        got = {lua_donor(r, board, member, 0.5, spec, u) for u in (i / 40 + 0.001 for i in range(40))}
        assert {None, "m004"} < got <= {None, *board} - {member}  # never itself
        assert len(got) >= 3  # copies the best, a tied member, or nobody, depending on u


def test_burn_in_keeps_members_below_it_off_the_board_and_never_donors(r):
    """compare = latest with exploit.burn_in_steps = N: decide.lua ranks on pbt:{EXP}:eligible, the latest
    scores of members whose latest score is at a step >= N, kept by decide.lua itself as members report
    (a member dropping below N, e.g. restarted fresh, leaves it); the pure rule on the board filtered the
    same way picks the same donor, and no donor is ever a member still burning in."""
    k = Keys("burn")
    rng = random.Random("burn-in")
    n_burn, exploits = 20, 0
    for trial in range(150):
        r.delete(k.scores, k.ckpts, k.eligible, k.meta, *(k.member(f"m{i:02d}") for i in range(10)))
        r.hset(k.meta, "state", "running")
        n = rng.randint(2, 10)
        board = {f"m{i:02d}": rng.choice([0.0, 1.0, 2.0, 0.5, math.nan, -1.0]) for i in range(n)}
        steps = {m: rng.choice([0, 10, 19, 20, 25, 40]) for m in board}
        member = rng.choice(list(board))
        spec = ExploitSpec(rng.choice(["truncation", "tournament"]), rng.choice([0.25, 0.5]),
                           rng.choice(["strict", "rank", "random"]), "latest", n_burn)
        order = [m for m in board if m != member] + [member]  # the others report first
        for m in order:
            if m != member and rng.random() < 0.3:  # an earlier report at another step, overwritten now
                _record(r, k, m, rng.choice([5.0, -5.0]), 40 if steps[m] < n_burn else 0, spec, "none", 0.0)
        u = rng.random()
        for m in order:
            mode = spec.rule if m == member else "none"
            reply = _record(r, k, m, board[m], steps[m], spec, mode, u)
        eligible = {m for m in board if steps[m] >= n_burn and math.isfinite(board[m])}
        assert {x.decode() for x in r.zrange(k.eligible, 0, -1)} == eligible, trial
        assert r.zcard(k.scores) == sum(math.isfinite(s) for s in board.values())  # the leaderboard keeps everyone
        if steps[member] < n_burn:
            continue  # Decider.prepare passes rule none there (test_burn_in.py): nothing to compare
        filtered = [(m, s) for m, s in board.items() if m in eligible or m == member]
        pure = exploit(filtered, member, board[member], spec, FixedU(u))
        donor = reply[6].decode() or None
        assert donor == pure, (trial, board, steps, member, spec, u)
        assert donor is None or steps[donor] >= n_burn
        exploits += donor is not None
    assert exploits > 15


def _record(r, k: Keys, member: str, score: float, step: int, spec: ExploitSpec, mode: str, u: float):
    """One decide.lua call for ``member`` at ``step`` (its seq advanced so that any number of calls are new)."""
    seq = int(r.hget(k.member(member), "seq") or 0) + 1
    r.hset(k.member(member), mapping={"seq": seq, "state": "ready"})
    finite = math.isfinite(score)
    return call(r, "decide", [k.member(member), k.scores, k.ckpts, k.meta, k.eligible, k.boards, k.reached], [
        member, seq, repr(score) if finite else "nan", int(finite), json.dumps({"key": member, "step": step}),
        mode, spec.quantile, repr(u), 0, spec.ties, "", spec.burn_in_steps, step, "",
    ])


def test_a_synchronous_round_waits_for_every_live_member_then_ranks_as_the_pure_rule(r):
    """ARGV[14] (exploit.synch): each report is recorded and answered 'wait' until every live member in
    pbt:{EXP}:reached got to the round; the last one is ranked on the whole board, as the pure rule."""
    k = Keys("synch")
    rng = random.Random("synch")
    for trial in range(60):
        n = rng.randint(2, 8)
        members = [f"m{i:02d}" for i in range(n)]
        r.delete(k.scores, k.ckpts, k.meta, k.reached, k.board(8), k.boards, *(k.member(m) for m in members))
        r.hset(k.meta, "state", "running")
        r.zadd(k.reached, {m: 4 for m in members})
        scores = {m: rng.choice([0.0, 1.0, 2.0, 0.5]) for m in members}
        spec = ExploitSpec(rng.choice(["truncation", "tournament"]), 0.25, rng.choice(["strict", "rank", "random"]))
        u = rng.random()
        for i, m in enumerate(rng.sample(members, n)):
            r.hset(k.member(m), mapping={"seq": 1, "state": "ready"})
            reply = call(r, "decide", [k.member(m), k.scores, k.ckpts, k.meta, k.board(8), k.boards, k.reached], [
                m, 1, repr(scores[m]), 1, json.dumps({"key": m}), spec.rule, spec.quantile, repr(u), 0, spec.ties,
                8, 0, 8, 8,
            ])
            if i < n - 1:
                assert reply == [b"wait", b"running"], (trial, i, reply)
                assert r.zscore(k.board(8), m) == scores[m]  # recorded all the same
            else:
                pure = exploit(list(scores.items()), m, scores[m], spec, FixedU(u))
                assert reply[0] == b"ok" and reply[2] == n and (reply[6].decode() or None) == pure, (trial, scores, m)
