"""Checkpoint uploads that overlap the next segment (``[worker] overlap_upload = true``).

The worker serializes and hashes the state in memory, publishes the event at once, and
uploads from a background thread while the arbiter decides and the next segment trains
(warm, it needs no download). The key stays in ``pbt:{EXP}:uploading`` until the object is
in the store, and a worker that must download it meanwhile waits for it (``await_upload``).
The price: a worker killed in that window leaves an event whose checkpoint never lands, and
a member that would start from it recovers from the best other checkpoint instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pbt_mq.core.hooks import Hooks
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.state.recovery import quarantine
from pbt_mq.store import checkpoint

log = logging.getLogger(__name__)
WAIT_MAX_S = 120.0  # how long a download waits for an upload still in flight (its uploader may be dead)


class Uploads:
    """At most one upload in flight per worker: memory stays bounded by one checkpoint."""

    def __init__(self, r: Any, hooks: Hooks | None = None):
        self.r = r
        self.hooks = hooks or Hooks()
        self._thread: threading.Thread | None = None

    def start(self, store: Any, exp: str, key: str, data: memoryview, sha256: str, serialize_s: float = 0.0) -> None:
        """Upload in the background (``serialize_s``: what serializing took, reported with the upload)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(store, exp, key, data, sha256, serialize_s),
                                        name="pbt-upload", daemon=True)
        self._thread.start()

    def _run(self, store: Any, exp: str, key: str, data: memoryview, sha256: str, serialize_s: float) -> None:
        t0 = time.perf_counter()
        try:
            checkpoint.upload(store, key, data, sha256)
        except Exception as exc:  # the store stayed down past its retries: no one may wait for it
            log.error("%s: upload of %s failed (%s); members starting from it will recover", exp, key, exc)
            try:
                quarantine(self.r, exp, key, f"its upload failed: {exc}")
            except Exception as again:
                log.error("%s: could not quarantine %s: %s", exp, key, again)
            return
        if self.hooks:
            self.hooks.checkpoint_saved(exp, len(data), serialize_s + time.perf_counter() - t0)
        k = Keys(exp)
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(k.uploading, key)
        pipe.zadd(k.stored, {key: now_ms()})
        pipe.execute()

    def wait(self) -> None:
        """Until the upload in flight (if any) is in the store: before the next, and at exit."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def await_upload(r: Any, exp: str, key: str, wait_max_s: float = WAIT_MAX_S) -> bool:
    """Wait while ``key`` is still being uploaded; False if it is not (it is really missing)."""
    uploading = Keys(exp).uploading
    deadline = time.monotonic() + wait_max_s
    if r.zscore(uploading, key) is None:
        return False
    while r.zscore(uploading, key) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True
