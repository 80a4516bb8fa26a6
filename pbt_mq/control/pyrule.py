"""Exploit rules that run in Python, inside the decision's WATCH: plug-ins (``rules.plugins``) and
several metrics (multi-objective PBT, ``rules.pareto``).

``decide.lua`` has recorded the score (rule "none"; with several metrics the first one's, for the
leaderboard). Here the board the member is ranked on is read, best first and at most
``rules.plugins.BOARD_MAX`` members: the sorted set itself for a plug-in; with several metrics the board's
hash of objective vectors (``Keys.vectors``: this member's written first, as ``decide.lua`` writes its
score), ordered by non-dominated rank then crowding distance into the scalar ``rules.pareto.pareto_scores``.
The rule's ``choose()`` is called on that board with the decision's rng, and the donor's checkpoint read.
The result is a ``decide.Reply`` as if the script had picked the donor, so interpreting, committing and
the lineage record (whose snapshot is that board: what replay re-runs the rule on) are the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from pbt_mq.broker.scripts import text
from pbt_mq.control.decide import Decider, Prepared, Reply
from pbt_mq.core.keys import Keys
from pbt_mq.rules import window
from pbt_mq.rules.base import sort_snapshot, truncation_size
from pbt_mq.rules.pareto import oriented, pareto_scores
from pbt_mq.rules.plugins import BOARD_MAX


def pick_in_python(pipe: Any, decider: Decider, prep: Prepared, raw: Sequence[Any] | Reply) -> Reply:
    """decide.lua's reply, with the donor a Python rule picks when ``prep.python`` (else as it came)."""
    reply = raw if isinstance(raw, Reply) else Reply.parse(raw)
    cfg = decider.cfg
    if cfg.multi and reply.status in ("ok", "wait"):
        record_vector(pipe, prep, cfg.modes)
    if reply.status != "ok" or not prep.python:
        return reply
    member = text(prep.args[0])
    if cfg.multi:
        board = pareto_board(pipe.hgetall(Keys.vectors(prep.keys[4])), cfg.modes)
        own = dict(board).get(member, math.nan)
    else:
        board = [(text(m), float(s)) for m, s in pipe.zrevrange(prep.keys[4], 0, BOARD_MAX - 1, withscores=True)]
        own = dict(board).get(member, math.nan) if cfg.exploit.window > 1 else prep.score  # the board holds means
    if cfg.exploit.subpopulations:  # one-way migration: only members that exploit at most as often
        board = [(m, s) for m, s in board if m == member or cfg.exploit.may_copy(member, m)]
    compared: dict[str, list[float]] = {}
    if decider.exploit.windowed:
        def windows(m: str) -> list[float]:
            if m not in compared:
                compared[m] = window.parse(reply.own_window if m == member else pipe.hget(prep.keys[7], m))
            return compared[m]

        donor = decider.exploit.choose_windowed(board, member, prep.rng, windows)
    else:
        donor = decider.exploit.choose(board, member, own, prep.rng)
    record = pipe.hget(prep.keys[2], donor) if donor else None
    others = [s for m, s in board if m != member]
    n = len(others) + 1
    return dataclasses.replace(
        reply, donor=donor or "", donor_record=text(record) if record else "", board=board, n=n,
        donor_window=window.encode(window.parse(pipe.hget(prep.keys[7], donor))) if donor and cfg.exploit.window > 1
        else "",
        windows=compared or None,
        worse=sum(s < own for s in others) if math.isfinite(own) else 0,
        better=sum(s > own for s in others) if math.isfinite(own) else len(others),
        k=truncation_size(n, cfg.exploit.quantile))


def record_vector(pipe: Any, prep: Prepared, modes: Sequence[str]) -> None:
    """Several metrics: the member's values on its board (only if finite and past the burn-in, as decide.lua
    puts a score on a board) and in the latest vectors (if finite: the front ``pbt status`` shows)."""
    member, step, burn_in = text(prep.args[0]), int(prep.args[12]), int(prep.args[11])
    board, latest = Keys.vectors(prep.keys[4]), Keys.vectors(prep.keys[1])
    raw = None if prep.vector is None else json.dumps(list(oriented(prep.vector, modes)))  # back to metric units
    for key, keep in ((latest, raw is not None), (board, raw is not None and step >= burn_in)):
        if keep:
            pipe.hset(key, member, raw)
        else:
            pipe.hdel(key, member)


def pareto_board(vectors: dict[Any, Any], modes: Sequence[str]) -> list[tuple[str, float]]:
    """A hash of metric values (member -> JSON list) as a board: (member, Pareto score), best first."""
    points = {text(m): oriented(json.loads(v), modes) for m, v in vectors.items()}
    return sort_snapshot(list(pareto_scores(points).items()))[:BOARD_MAX]
