"""msgpack for RQ, and a Job class that runs nothing but the segment runner.

RQ pickles by default; anyone who can write to Redis could then run code on every
GPU node. With ``serializer=MsgpackSerializer`` and ``job_class=SegmentJob`` a
queued job is data, and the only function a worker will call is
``pbt_mq.segment.run_segment``.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
from rq.job import Job

from .protocol import ProtocolError, safe_unpackb

SEGMENT_FUNC = "pbt_mq.segment.run_segment"
MAX_JOB_BYTES = 4 << 20
REFUSED = b"PBT-REFUSED:"  # never the start of msgpack job data (an array)


def bounded_inflate(raw: bytes, limit: int) -> bytes | None:
    """zlib-inflate at most ``limit`` bytes; None if it would be more (a zip bomb in Redis)."""
    try:
        d = zlib.decompressobj()
        out = d.decompress(raw, limit + 1)
    except zlib.error:
        return raw  # RQ also falls back to the raw bytes
    return None if len(out) > limit or d.unconsumed_tail else out


class MsgpackSerializer:
    """RQ's serializer protocol (``dumps``/``loads``); tuples come back as lists."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True, default=_default)

    @staticmethod
    def loads(data: bytes) -> Any:
        if data.startswith(REFUSED):  # SegmentJob.restore found the job's data too large to inflate
            raise ProtocolError(data[len(REFUSED):].decode())
        return safe_unpackb(data, max_bytes=MAX_JOB_BYTES)


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot msgpack a {type(obj).__name__}; RQ jobs carry plain data only")


class UnsafeJob(ProtocolError):
    """A queued job that asks for anything but the segment runner."""


class SegmentJob(Job):
    """Runs only ``run_segment``: no other function, no bound method, no callbacks, no webhooks.

    RQ resolves callbacks by import path and calls them on success, failure (also when
    ``func`` refuses a job) and stop, and sends webhooks from the worker; a forged job
    could use either, so both are refused here, not only in ``func``.
    """

    def restore(self, raw_data: Any) -> Any:
        """RQ inflates a job's data before any check of ours: bound it first, so a job written
        straight into Redis cannot make a worker allocate gigabytes. Too large: the job is
        refused (dead-lettered with the reason) when it runs, as any forged job is."""
        data = raw_data.get(b"data") if isinstance(raw_data, dict) else None
        if isinstance(data, bytes) and bounded_inflate(data, MAX_JOB_BYTES) is None:
            why = f"job {self.id}: its data inflates past {MAX_JOB_BYTES >> 20} MiB; refused unread"
            raw_data = {**raw_data, b"data": REFUSED + why.encode()}
        exc_info = raw_data.get(b"exc_info") if isinstance(raw_data, dict) else None
        if isinstance(exc_info, bytes) and bounded_inflate(exc_info, MAX_JOB_BYTES) is None:
            raw_data = {**raw_data, b"exc_info": b"(refused: inflates past the limit)"}
        return super().restore(raw_data)

    @property
    def func(self):  # type: ignore[override]
        if self.func_name != SEGMENT_FUNC or self.instance is not None:
            raise UnsafeJob(f"job {self.id}: refusing to run {self.func_name!r}; only {SEGMENT_FUNC} is allowed")
        self._refuse_extras()
        from .segment import run_segment

        return run_segment

    def _refuse_extras(self) -> None:
        names = (self._success_callback_name, self._failure_callback_name, self._stopped_callback_name)
        if any(names):
            raise UnsafeJob(f"job {self.id}: callbacks are not allowed on segment jobs")
        if self.webhooks:
            raise UnsafeJob(f"job {self.id}: webhooks are not allowed on segment jobs")

    def _no_callback(self, name: str | None) -> None:
        if name:
            raise UnsafeJob(f"job {self.id}: refusing callback {name!r}; callbacks are not allowed on segment jobs")

    @property
    def success_callback(self):  # type: ignore[override]
        self._no_callback(self._success_callback_name)
        return None

    @property
    def failure_callback(self):  # type: ignore[override]
        self._no_callback(self._failure_callback_name)
        return None

    @property
    def stopped_callback(self):  # type: ignore[override]
        self._no_callback(self._stopped_callback_name)
        return None

    def send_webhooks(self, *args: Any, **kwargs: Any) -> None:
        """Never: a segment job has no webhooks, and a forged one gets no HTTP request from a GPU node."""
        if self.webhooks:
            self.log.warning("Job %s: ignoring %d webhook(s); not allowed on segment jobs", self.id, len(self.webhooks))
