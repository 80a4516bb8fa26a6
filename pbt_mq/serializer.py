"""msgpack for RQ, and a Job class that runs nothing but the segment runner.

RQ pickles by default; anyone who can write to Redis could then run code on every
GPU node. With ``serializer=MsgpackSerializer`` and ``job_class=SegmentJob`` a
queued job is data, and the only function a worker will call is
``pbt_mq.segment.run_segment``.
"""

from __future__ import annotations

from typing import Any

import msgpack
from rq.job import Job

from .protocol import ProtocolError, safe_unpackb

SEGMENT_FUNC = "pbt_mq.segment.run_segment"
MAX_JOB_BYTES = 4 << 20


class MsgpackSerializer:
    """RQ's serializer protocol (``dumps``/``loads``); tuples come back as lists."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True, default=_default)

    @staticmethod
    def loads(data: bytes) -> Any:
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
