"""The failed event: a member's segment failed for good, and the arbiters should replace the member.

With ``worker.on_failure = "replace"`` a worker whose trainable raised ``max_retries + 1`` times, or
the reaper after ``max_retries + 1`` dead workers, publishes this to the experiment's events stream
(plain field ``failed`` set, next to member, seq and step), in the transaction that marks the member
``ready``; an arbiter decides it like a ready event with a NaN score (``control.replace``). Same
envelope and validation as ``core.protocol``'s messages; readers of ready events skip it (its type
is not ``ready``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pbt_mq.core.protocol import ReadyEvent, _float, _opt_key, _pack, _segment_fields, _shallow, _str, _unpack

MAX_ERROR = 4000  # characters of traceback kept (its end: where it raised)


@dataclass(frozen=True)
class FailedEvent:
    """Segment ``seq`` of ``member`` (started at ``step`` from ``start_key``) failed: ``error`` says why."""

    experiment: str
    member: str
    seq: int
    step: int  # the step the failed segment started from
    hparams: dict
    error: str
    start_key: str | None = None
    train_s: float = 0.0
    worker: str = ""

    TYPE = "failed"

    def encode(self) -> bytes:
        return _pack(self.TYPE, _shallow(self))

    @classmethod
    def decode(cls, data: bytes) -> FailedEvent:
        m = _unpack(data, cls.TYPE)
        return cls(
            **_segment_fields(m),
            error=_str(m.get("error", ""), "error", max_len=MAX_ERROR),
            start_key=_opt_key(m.get("start_key"), "start_key"),
            train_s=_float(m.get("train_s", 0.0), "train_s", finite=True, low=0.0),
            worker=_str(m.get("worker", ""), "worker"),
        )

    def stream_fields(self) -> dict[str, object]:
        """The events stream entry: plain copies for redis-cli and tools, the message in ``msg``."""
        return {"member": self.member, "seq": self.seq, "step": self.step, "score": "nan", FAILED_FIELD: 1,
                "msg": self.encode()}


FAILED_FIELD = "failed"  # the plain field that marks an events entry as a FailedEvent


def is_failed(fields: dict[bytes, bytes]) -> bool:
    """Is this events stream entry a failed segment (not a ready one)?"""
    return FAILED_FIELD.encode() in fields


def decode_event(fields: dict[bytes, bytes]) -> ReadyEvent | FailedEvent:
    """The one decoder of an events stream entry: its ``msg`` as the type its plain fields say.
    Raises ProtocolError (from the message's own validation) for anything else."""
    return (FailedEvent if is_failed(fields) else ReadyEvent).decode(fields.get(b"msg"))
