"""What ``pbt status`` says of a synchronous round in progress (``exploit.synch``; the rounds are
decided by ``control.synch``)."""

from __future__ import annotations

from typing import Any

from pbt_mq.core.keys import Keys


def round_of(r: Any, exp: str) -> dict[str, Any] | None:
    """The lowest ready point members wait at, who waits there, and which live members are behind it."""
    k = Keys(exp)
    waiting = r.zrange(k.waiting, 0, -1, withscores=True)
    if not waiting:
        return None
    at = min(s for _, s in waiting)
    behind = r.zrangebyscore(k.reached, "-inf", f"({at!r}")
    return {"at": int(at), "waiting": sorted(m.decode() for m, s in waiting if s == at),
            "behind": sorted(m.decode() for m in behind)}
