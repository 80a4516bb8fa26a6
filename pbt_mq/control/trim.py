"""Bounded event streams: decided events older than a retention window are trimmed.

An events stream only grows; once the arbiters have decided an event, the lineage stream
holds what it meant, so the event itself is kept only for a window (``--events-retention-s``,
for ``pbt stats`` and a look with redis-cli). The trim never reaches an event that is pending
in the consumer group or not yet delivered: its MINID is at most the oldest of those.
The lineage stream is the experiment's record (replay, plots, export) and is never trimmed.
"""

from __future__ import annotations

from typing import Any

from pbt_mq.core.keys import GROUP, Keys


def _id(entry_id: bytes | str) -> tuple[int, int]:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def trim_events(r: Any, exp: str, retention_s: float, now_ms: int) -> int:
    """XTRIM the events of ``exp`` below min(now - retention, oldest undecided); returns how many went."""
    stream = Keys(exp).events
    floor = (now_ms - int(retention_s * 1000), 0)
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


def trim_boards(r: Any, exp: str, everything: bool = False) -> int:
    """Delete the boards (exploit.compare = "step") no member will be ranked on again: those below the
    slowest live member's last ready point (all of them once the experiment ended); returns how many."""
    k = Keys(exp)
    slowest = r.zrange(k.reached, 0, 0, withscores=True)
    floor = "+inf" if everything or not slowest else f"({slowest[0][1]!r}"
    old = [b.decode() for b in r.zrangebyscore(k.boards, "-inf", floor)]
    if not old:
        if everything:
            r.delete(k.reached)
        return 0
    pipe = r.pipeline(transaction=False)
    for at in old:
        pipe.delete(k.board(int(float(at))))
    pipe.zrem(k.boards, *old)
    if everything:
        pipe.delete(k.reached)
    pipe.execute()
    return len(old)
