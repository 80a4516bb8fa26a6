"""Checkpoints this worker wrote, kept in host memory for the next segment that starts
from one of them: a population larger than the fleet then continues without a download.

Bounded in bytes (``PBT_CACHE_MB``), least recently used first out. An entry is the object's exact
bytes as the store holds them, kept once the segment's event is published; a hit is verified as a
download is (sha256 and size against the checkpoint's reference) and decoded from a copy (the
loader's), so a trainable that keeps the decoded tensors and trains them in place cannot change it,
and a bit flip in host memory costs a download, never a wrong model.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.store.base import hash_buffers

log = logging.getLogger(__name__)

DEFAULT_MB = 4096  # what PBT_CACHE_MB leaves unset means, at most: a GPU node has 8 workers and far more memory
RAM_SHARE = 8  # ... and never more than this share of the host's memory (a laptop)


def default_limit_bytes() -> int:
    """``min(4 GiB, host memory / 8)``: room for a few members of a large model per worker."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not Linux
        ram = 8 * DEFAULT_MB << 20
    return min(DEFAULT_MB << 20, ram // RAM_SHARE)


@dataclass(frozen=True)
class Entry:
    data: Any  # a buffer (memoryview) of the object's bytes
    sha256: str
    size: int


class CheckpointCache:
    """An LRU of checkpoint bytes by key, at most ``limit_bytes`` in all (0: off)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(0, int(limit_bytes))
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0
        self.peak_bytes = 0
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        self.rejected = 0  # hits whose bytes no longer matched their checksum

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def put(self, key: str, data: Any, sha256: str) -> bool:
        """Keep ``data`` (the object's bytes; not copied, so the caller must not change them) under
        ``key``, evicting the least recently used; False if it cannot fit at all."""
        size = memoryview(data).nbytes
        if not self.limit_bytes or size > self.limit_bytes:
            return False
        self.discard(key)
        while self.bytes + size > self.limit_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            self.evicted += 1
        self._entries[key] = Entry(data, sha256, size)
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        return True

    def get(self, ref: CheckpointRef) -> Any | None:
        """``ref``'s bytes if held and still exactly what the reference names; else None (a miss)."""
        entry = self._entries.get(ref.key)
        if entry is None or entry.sha256 != ref.sha256 or entry.size != ref.size:
            self.misses += 1
            return None
        sha, size = hash_buffers([memoryview(entry.data)])
        if sha != ref.sha256 or size != ref.size:
            log.warning("cached checkpoint %s changed in memory (its sha256 no longer matches); downloading it", ref.key)
            self.discard(ref.key)
            self.rejected += 1
            self.misses += 1
            return None
        self._entries.move_to_end(ref.key)
        self.hits += 1
        return entry.data

    def demote(self, key: str) -> None:
        """Make ``key`` the next to be evicted (it is unlikely to be asked for again)."""
        if key in self._entries:
            self._entries.move_to_end(key, last=False)

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def figures(self) -> dict[str, int]:
        """For the heartbeat and ``pbt top``."""
        return {"cache_bytes": self.bytes, "cache_limit": self.limit_bytes, "cache_entries": len(self._entries),
                "cache_hits": self.hits, "cache_misses": self.misses, "cache_evicted": self.evicted}
