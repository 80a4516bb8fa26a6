"""Bad checkpoints: take them off the leaderboard, and find good ones to start from instead."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import redis

from .keys import Keys
from .protocol import CheckpointRef

log = logging.getLogger("pbt_mq.recovery")


def quarantine(r: redis.Redis, exp: str, key: str, reason: str) -> None:
    """Make sure no one is handed ``key`` again: remove its owner from the leaderboard (if the
    owner's scored checkpoint is still that key) and record it in the dead-letter stream."""
    if not key:
        return
    k = Keys(exp)
    owner = key.split("/")[1] if key.count("/") >= 2 else ""
    with r.pipeline(transaction=True) as pipe:
        while True:  # any member's decision touches the hash: re-read and try again
            try:
                pipe.watch(k.ckpts)
                raw = pipe.hget(k.ckpts, owner) if owner else None
                pipe.multi()
                if raw is not None and json.loads(raw).get("key") == key:
                    pipe.zrem(k.scores, owner)
                    pipe.hdel(k.ckpts, owner)
                pipe.zrem(k.uploading, key)  # no download waits for it any longer
                pipe.xadd(k.dead, {"reason": f"bad checkpoint: {reason}", "source": "store", "entry": key},
                          maxlen=10_000, approximate=True)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def donors(r: redis.Redis, exp: str, limit: int = 16) -> Iterator[tuple[CheckpointRef, int]]:
    """The best members' scored checkpoints, best first."""
    k = Keys(exp)
    for member in r.zrevrange(k.scores, 0, limit - 1):
        raw = r.hget(k.ckpts, member)
        if raw is None:
            continue
        rec = json.loads(raw)
        yield CheckpointRef(rec["key"], rec["sha256"], int(rec["size"])), int(rec["step"])
