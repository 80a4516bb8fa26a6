"""Bounded event streams: decided events older than a retention window are trimmed.

An events stream only grows; once the arbiters have decided an event, the lineage record
holds what it meant (its timings included, for ``pbt stats``), so the event itself is kept only
for a few seconds (``--events-retention-s``, for a look with redis-cli). The trim never reaches
an event that is pending in the consumer group or not yet delivered: its MINID is at most the
oldest of those. An experiment that ended has nothing left to decide: its stream is emptied.
The lineage is the experiment's record (replay, plots, export): never trimmed, only archived
(``state.archive``). An experiment with ``[tracking]`` keeps every event its tracker sender
(``worker.tracking``) has not sent yet, until that sender is done: ``tracking_floor``.
"""

from __future__ import annotations

from typing import Any

import redis

from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import ExperimentState, Meta, TrackingState


def _id(entry_id: bytes | str) -> tuple[int, int]:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def tracking_floor(r: Any, exp: str, which: str) -> tuple[int, int] | None:
    """The first entry of ``which`` ("events" or "lineage") the tracker sender has not sent, for an
    experiment with ``[tracking]`` whose sending is not done: nothing from it on may leave Redis.
    None: no sender waits (call it only for a tracked experiment)."""
    t = TrackingState.read(r, Keys(exp).tracking, which, "done_ms")
    if t.done_ms:
        return None
    ms, seq = _id(getattr(t, which) or "0-0")
    return ms, seq + 1


def trim_events(r: Any, exp: str, retention_s: float, now_ms: int, tracked: bool = False) -> int:
    """XTRIM the events of ``exp`` below min(now - retention, oldest undecided, the tracker's cursor);
    returns how many went."""
    stream = Keys(exp).events
    floor = (now_ms - int(retention_s * 1000), 0)
    keep = tracking_floor(r, exp, "events") if tracked else None
    if keep is not None:
        floor = min(floor, keep)
    pending = r.xpending(stream, GROUP)
    if pending and pending.get("pending"):
        floor = min(floor, _id(pending["min"]))
    for group in r.xinfo_groups(stream):
        if group["name"] in (GROUP, GROUP.encode()):
            ms, seq = _id(group["last-delivered-id"])
            floor = min(floor, (ms, seq + 1))  # anything after it is not delivered yet
    if floor[0] <= 0:
        return 0
    return int(r.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def trim_boards(r: Any, exp: str) -> int:
    """Delete the boards (exploit.compare = "step") no member will be ranked on again: those below the
    slowest live member's last ready point; returns how many."""
    k = Keys(exp)
    slowest = r.zrange(k.reached, 0, 0, withscores=True)
    floor = "+inf" if not slowest else f"({slowest[0][1]!r}"
    old = [b.decode() for b in r.zrangebyscore(k.boards, "-inf", floor)]
    if not old:
        return 0
    pipe = r.pipeline(transaction=False)
    _drop(pipe, k, old)
    pipe.execute()
    return len(old)


def drop_rounds(r: Any, exp: str) -> int:
    """An ended experiment's boards and where its members stood (``reached``), in one transaction that
    first checks it was not set running again meanwhile (``pbt local --resume`` between the arbiter's
    look and now: a round timer reads a missing ``reached`` as "every round complete"); returns how
    many boards went."""
    k = Keys(exp)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.meta, k.boards)
                if Meta.read(pipe, k.meta, "state").state is ExperimentState.RUNNING:
                    pipe.unwatch()
                    return 0
                old = [b.decode() for b in pipe.zrange(k.boards, 0, -1)]
                pipe.multi()
                _drop(pipe, k, old)
                pipe.delete(k.reached)
                pipe.execute()
                return len(old)
            except redis.WatchError:
                continue


def _drop(pipe: Any, k: Keys, boards: list[str]) -> None:
    for at in boards:
        board = k.board(int(float(at)))
        pipe.delete(board)
        pipe.delete(Keys.vectors(board))  # several metrics: its objective vectors go with it
    if boards:
        pipe.zrem(k.boards, *boards)
def empty_events(r: Any, exp: str, tracked: bool = False) -> int:
    """An ended experiment's events: no one decides them any more (the consumer group stays); those
    its tracker sender has still to send stay until it has."""
    keep = tracking_floor(r, exp, "events") if tracked else None
    if keep is not None:
        return 0 if keep[0] <= 0 else int(r.xtrim(Keys(exp).events, minid=f"{keep[0]}-{keep[1]}", approximate=False))
    return int(r.xtrim(Keys(exp).events, maxlen=0, approximate=False))
