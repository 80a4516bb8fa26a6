"""Bad checkpoints: take them off the leaderboard, and find good ones to start from instead."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import DeadLetter, ScoredCheckpoint
from pbt_mq.core.protocol import CheckpointRef, checkpoint_owner

log = logging.getLogger(__name__)
DEAD_MAXLEN = 10_000


def dead_letter(pipe: Any, stream: str, **fields: Any) -> None:
    """Append to a dead-letter stream (bounded: the newest DEAD_MAXLEN stay)."""
    pipe.xadd(stream, DeadLetter.fields(**fields), maxlen=DEAD_MAXLEN, approximate=True)


def quarantine(r: Any, exp: str, key: str, reason: str) -> None:
    """Make sure no one is handed ``key`` again: remove its owner from the leaderboard (if the
    owner's scored checkpoint is still that key) and record it in the dead-letter stream."""
    if not key:
        return
    k = Keys(exp)
    owner = checkpoint_owner(key)
    with r.pipeline(transaction=True) as pipe:
        while True:  # any member's decision touches the hash: re-read and try again
            try:
                pipe.watch(k.ckpts)
                raw = pipe.hget(k.ckpts, owner) if owner else None
                pipe.multi()
                if (rec := ScoredCheckpoint.read(raw)) is not None and rec.key == key:
                    pipe.zrem(k.scores, owner)
                    pipe.zrem(k.eligible, owner)
                    pipe.hdel(k.ckpts, owner)
                pipe.zrem(k.uploading, key)  # no download waits for it any longer
                dead_letter(pipe, k.dead, reason=f"bad checkpoint: {reason}", source="store", entry=key)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def donors(r: Any, exp: str, limit: int = 16) -> Iterator[tuple[CheckpointRef, int]]:
    """The best members' scored checkpoints, best first."""
    k = Keys(exp)
    for member in r.zrevrange(k.scores, 0, limit - 1):
        rec = ScoredCheckpoint.read(r.hget(k.ckpts, member))
        if rec is None:  # gone, or written by hand
            continue
        yield CheckpointRef(rec.key, rec.sha256, rec.size), rec.step
