"""decide.lua and rules.exploit must agree on every board: that is what makes decisions replayable."""

from __future__ import annotations

import json
import math
import random

import pytest

from pbt_mq.keys import Keys
from pbt_mq.rules import ExploitSpec, exploit
from pbt_mq.scripts import call


def lua_donor(r, board: dict[str, float], member: str, own: float, spec: ExploitSpec, u: float) -> str | None:
    k = Keys("parity")
    r.delete(k.scores, k.ckpts, k.member(member), k.meta)
    r.hset(k.meta, "state", "running")
    r.hset(k.member(member), mapping={"seq": 0, "state": "ready"})
    for m, s in board.items():
        if m != member and math.isfinite(s):
            r.zadd(k.scores, {m: s})
            r.hset(k.ckpts, m, json.dumps({"key": m}))
    finite = math.isfinite(own)
    reply = call(r, "decide", [k.member(member), k.scores, k.ckpts, k.meta], [
        member, 0, repr(own) if finite else "nan", int(finite), json.dumps({"key": member}),
        spec.rule, spec.quantile, repr(u), 0, spec.ties,
    ])
    return reply[6].decode() or None


class FixedU(random.Random):
    """An rng whose first draw is known, so the script gets the same u as the pure rule."""

    def __init__(self, u: float):
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize("ties", ["strict", "rank"])
@pytest.mark.parametrize("rule", ["truncation", "tournament"])
def test_script_and_pure_rule_pick_the_same_donor(r, rule, ties):
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
        assert lua_donor(r, board, member, own, spec, u) == pure, (board, member, spec, u)
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
