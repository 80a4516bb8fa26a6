"""Bounded event streams: decided events older than a retention window are trimmed.

An events stream only grows; once the arbiters have decided an event, the lineage record
holds what it meant (its timings included, for ``pbt stats``), so the event itself is kept only
for a few seconds (``--events-retention-s``, for a look with redis-cli). The trim never reaches
an event that is pending in the consumer group or not yet delivered: its MINID is at most the
oldest of those. An experiment that ended has nothing left to decide: its stream is emptied.
The lineage is the experiment's record (replay, plots, export): never trimmed, only archived
(``state.archive``).
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


def empty_events(r: Any, exp: str) -> int:
    """An ended experiment's events: no one decides them any more (the consumer group stays)."""
    return int(r.xtrim(Keys(exp).events, maxlen=0, approximate=False))
