"""The wire protocol: one frozen dataclass per message, msgpack on the wire.

Every payload is a msgpack map ``{"v": SCHEMA_VERSION, "t": <type>, ...}``. Decoding
never executes anything (msgpack has no code objects; ext types are refused) and
validates every field, so a peer that writes garbage into Redis gets a
``ProtocolError`` naming the field, never a crash or a silent wrong value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

import msgpack

from pbt_mq.core.model import Why

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: a message is control data, never weights
MAX_STR = 1024
MAX_KEY = 1024
MAX_MAP_ITEMS = 256
MAX_SEGMENT_SECONDS = 7 * 24 * 3600.0

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
WHY_VALUES = tuple(w.value for w in Why)

Scalar = bool | int | float | str
HParams = dict[str, Scalar]


class ProtocolError(ValueError):
    """A message that cannot be trusted; the text names the field and the fault."""


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _shallow(obj: Any) -> dict[str, Any]:
    """The message's fields as a dict; nested refs are replaced by their wire form by the caller.

    Not ``dataclasses.asdict``: its recursive deep copy was an eighth of an arbiter decision."""
    return {name: getattr(obj, name) for name in _names(type(obj))}


@dataclass(frozen=True)
class CheckpointRef:
    """An immutable object in the checkpoint store and the sha256 it must have."""

    key: str
    sha256: str
    size: int

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_wire(cls, raw: Any, where: str) -> CheckpointRef:
        m = _map(raw, where, max_items=8)
        key = _ckpt_key(m.get("key"), f"{where}.key")
        sha = _str(m.get("sha256"), f"{where}.sha256", max_len=64)
        if not SHA256_RE.match(sha):
            raise ProtocolError(f"{where}.sha256: must be 64 lowercase hex digits")
        size = _int(m.get("size"), f"{where}.size", low=0, high=1 << 46)
        return cls(key, sha, size)


# A ready event's ``timings_s``: seconds per phase, and 1.0 under how the segment started.
PHASES = ("build", "load", "train", "eval", "save")  # build: constructing a trainable; load: its start checkpoint
STARTS = ("warm", "cached", "cold", "fresh", "recovered")  # warm: the live model; cached: host memory; cold: downloaded
NO_DOWNLOAD = ("warm", "cached")  # a continuing segment that started without a download


def start_kind(timings: dict[str, float]) -> str:
    """How a segment started, from its timings ("?" for none known)."""
    return next((h for h in STARTS if h in timings), "?")


@dataclass(frozen=True)
class ReadyEvent:
    """A member finished a segment: its score and the checkpoint it wrote."""

    experiment: str
    member: str
    seq: int
    step: int
    score: float  # may be NaN/inf: the arbiter treats it as worst, never as a donor
    checkpoint: CheckpointRef
    hparams: HParams
    metrics: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0  # seconds of training this member has had, all segments
    start_step: int = 0
    start_key: str | None = None  # the checkpoint this segment started from (lineage edge)

    TYPE = "ready"

    def encode(self) -> bytes:
        body = _shallow(self)
        body["checkpoint"] = self.checkpoint.to_wire()
        return _pack(self.TYPE, body)

    @classmethod
    def decode(cls, data: bytes) -> ReadyEvent:
        m = _unpack(data, cls.TYPE)
        return cls(
            **_segment_fields(m),
            score=_float(m.get("score"), "score", finite=False),
            checkpoint=CheckpointRef.from_wire(m.get("checkpoint"), "checkpoint"),
            metrics=_floats(m.get("metrics", {}), "metrics", finite=False),
            worker=_str(m.get("worker", ""), "worker"),
            timings_s=_floats(m.get("timings_s", {}), "timings_s", finite=True),
            train_s=_float(m.get("train_s", 0.0), "train_s", finite=True, low=0.0),
            start_step=_int(m.get("start_step", 0), "start_step", low=0, high=1 << 62),
            start_key=_opt_key(m.get("start_key"), "start_key"),
        )


@dataclass(frozen=True)
class SegmentCommand:
    """Train ``member`` from ``start`` (None: fresh init) with ``hparams`` until the target.

    The target is ``until_step`` (ready by steps) or ``seconds`` (ready by time);
    exactly one is set. ``why``/``parent`` say where the weights come from.
    """

    experiment: str
    member: str
    seq: int
    step: int  # the step the start checkpoint is at
    hparams: HParams
    why: str
    start: CheckpointRef | None = None
    until_step: int | None = None
    seconds: float | None = None
    parent: str | None = None
    parent_step: int | None = None
    train_s: float = 0.0
    attempt: int = 0
    ready_ms: int = 0  # when the event that caused this command was published
    seed: int | None = None  # a fresh start's seed when it is not the member's own (a replacement)

    TYPE = "segment"

    def __post_init__(self) -> None:
        if (self.until_step is None) == (self.seconds is None):
            raise ProtocolError("target: exactly one of until_step and seconds must be set")
        if self.why not in WHY_VALUES:
            raise ProtocolError(f"why: must be one of {WHY_VALUES}, got {self.why!r}")

    def encode(self) -> bytes:
        body = _shallow(self)
        body["start"] = self.start.to_wire() if self.start else None
        return _pack(self.TYPE, body)

    @classmethod
    def decode(cls, data: bytes) -> SegmentCommand:
        m = _unpack(data, cls.TYPE)
        start = m.get("start")
        until = m.get("until_step")
        secs = m.get("seconds")
        parent = m.get("parent")
        pstep = m.get("parent_step")
        seed = m.get("seed")
        return cls(
            experiment=_name(m.get("experiment"), "experiment"),
            member=_name(m.get("member"), "member"),
            seq=_int(m.get("seq"), "seq", low=0, high=1 << 31),
            step=_int(m.get("step"), "step", low=0, high=1 << 62),
            hparams=_hparams(m.get("hparams"), "hparams"),
            why=_str(m.get("why"), "why", max_len=16),
            start=None if start is None else CheckpointRef.from_wire(start, "start"),
            until_step=None if until is None else _int(until, "until_step", low=1, high=1 << 62),
            seconds=None
            if secs is None
            else _float(secs, "seconds", finite=True, low=1e-6, high=MAX_SEGMENT_SECONDS),
            parent=None if parent is None else _name(parent, "parent"),
            parent_step=None if pstep is None else _int(pstep, "parent_step", low=0, high=1 << 62),
            train_s=_float(m.get("train_s", 0.0), "train_s", finite=True, low=0.0),
            attempt=_int(m.get("attempt", 0), "attempt", low=0, high=1000),
            ready_ms=_int(m.get("ready_ms", 0), "ready_ms", low=0, high=1 << 62),
            seed=None if seed is None else _int(seed, "seed", low=0, high=(1 << 63) - 1),
        )


# ---------------------------------------------------------------- checkpoint keys


def checkpoint_key(experiment: str, member: str, seq: int, step: int, token: str, ext: str) -> str:
    """``EXP/MEMBER/SEQ-sSTEP-TOKEN.EXT``: unique (a random token), and its owner readable from it."""
    return f"{experiment}/{member}/{seq:06d}-s{step}-{token}.{ext}"


def checkpoint_owner(key: str) -> str:
    """The member that wrote ``key`` ('' if the key is not one of ours)."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 else ""


def checkpoint_key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as a store key, or None: relative, no '.', '..' or empty parts,
    no backslash or NUL, and none of the stores' own names ('.tmp/', '*.sha256', '*.part')."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        return f"must be a relative key without '..', '.' or '//', got {key!r}"
    if parts[0] == ".tmp" or key.endswith((".sha256", ".part")):
        return f"{key!r}: '.tmp/', '*.sha256' and '*.part' are the store's own names"
    return None


# ---------------------------------------------------------------- packing


def _pack(kind: str, body: dict[str, Any]) -> bytes:
    data = msgpack.packb({"v": SCHEMA_VERSION, "t": kind, **body}, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{kind}: encoded size {len(data)} exceeds {MAX_MESSAGE_BYTES} bytes")
    return data


def safe_unpackb(data: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """msgpack decode with hard limits and no ext types (so no object construction)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"payload: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(f"payload: {len(data)} bytes exceeds the limit of {max_bytes}")
    if len(data) >= 2 and data[0] == 0x80 and data[1] in range(0, 6):
        raise ProtocolError("payload: looks like a Python pickle; pickle is never accepted")

    def refuse_ext(code: int, _: bytes) -> Any:
        raise ProtocolError(f"payload: msgpack ext type {code} is not allowed")

    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            ext_hook=refuse_ext,
            max_array_len=100_000,
            max_map_len=10_000,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"payload: not valid msgpack ({type(exc).__name__}: {exc})") from None
    _refuse_timestamps(obj)
    return obj


def _refuse_timestamps(obj: Any) -> None:
    """msgpack decodes ext type -1 to a ``Timestamp`` without calling ``ext_hook``: refuse it too."""
    todo = [obj]
    while todo:
        x = todo.pop()
        if isinstance(x, msgpack.Timestamp):
            raise ProtocolError("payload: msgpack ext type -1 (timestamp) is not allowed")
        if isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)


def _unpack(data: Any, kind: str) -> dict[str, Any]:
    m = safe_unpackb(data)
    if not isinstance(m, dict):
        raise ProtocolError(f"payload: expected a map, got {type(m).__name__}")
    version = m.get("v")
    if version != SCHEMA_VERSION:
        raise ProtocolError(
            f"v: schema version {version!r} is not supported (this build speaks {SCHEMA_VERSION});"
            " upgrade the older side so workers and arbiters run the same pbt-mq"
        )
    if m.get("t") != kind:
        raise ProtocolError(f"t: expected message type {kind!r}, got {m.get('t')!r}")
    if len(m) > 64:
        raise ProtocolError(f"{kind}: too many fields ({len(m)})")
    return m


# ---------------------------------------------------------------- validators


def _map(raw: Any, where: str, max_items: int = MAX_MAP_ITEMS) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: expected a map, got {type(raw).__name__}")
    if len(raw) > max_items:
        raise ProtocolError(f"{where}: {len(raw)} entries exceeds the limit of {max_items}")
    return raw


def _str(raw: Any, where: str, max_len: int = MAX_STR) -> str:
    if not isinstance(raw, str):
        raise ProtocolError(f"{where}: expected a string, got {type(raw).__name__}")
    if len(raw) > max_len:
        raise ProtocolError(f"{where}: {len(raw)} characters exceeds the limit of {max_len}")
    return raw


def _segment_fields(m: dict[str, Any]) -> dict[str, Any]:
    """The fields every segment message starts with (ready and failed events), validated."""
    return {
        "experiment": _name(m.get("experiment"), "experiment"),
        "member": _name(m.get("member"), "member"),
        "seq": _int(m.get("seq"), "seq", low=0, high=1 << 31),
        "step": _int(m.get("step"), "step", low=0, high=1 << 62),
        "hparams": _hparams(m.get("hparams"), "hparams"),
    }


def _name(raw: Any, where: str) -> str:
    s = _str(raw, where, max_len=128)
    if not NAME_RE.match(s):
        raise ProtocolError(f"{where}: {s!r} is not a valid name (letters, digits, _ . -)")
    return s


def _int(raw: Any, where: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ProtocolError(f"{where}: expected an integer, got {type(raw).__name__}")
    if not low <= raw <= high:
        raise ProtocolError(f"{where}: {raw} is outside [{low}, {high}]")
    return raw


def _float(
    raw: Any, where: str, finite: bool, low: float = -math.inf, high: float = math.inf
) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise ProtocolError(f"{where}: expected a number, got {type(raw).__name__}")
    value = float(raw)
    if math.isnan(value) or math.isinf(value):
        if finite:
            raise ProtocolError(f"{where}: must be a finite number, got {value}")
        return value
    if not low <= value <= high:
        raise ProtocolError(f"{where}: {value} is outside [{low}, {high}]")
    return value


def _floats(raw: Any, where: str, finite: bool) -> dict[str, float]:
    m = _map(raw, where)
    return {
        _str(k, f"{where} key", max_len=128): _float(v, f"{where}.{k}", finite=finite)
        for k, v in m.items()
    }


def _ckpt_key(raw: Any, where: str) -> str:
    """A store key, by the one rule the stores enforce too, so a bad key dies here, not on a GPU node."""
    key = _str(raw, where, max_len=MAX_KEY)
    problem = checkpoint_key_problem(key)
    if problem:
        raise ProtocolError(f"{where}: {problem}")
    return key


def _opt_key(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    return _ckpt_key(raw, where)


def _hparams(raw: Any, where: str) -> HParams:
    m = _map(raw, where)
    out: HParams = {}
    for k, v in m.items():
        key = _str(k, f"{where} key", max_len=128)
        if isinstance(v, bool) or isinstance(v, int):
            out[key] = v
        elif isinstance(v, float):
            out[key] = _float(v, f"{where}.{key}", finite=True)
        elif isinstance(v, str):
            out[key] = _str(v, f"{where}.{key}", max_len=256)
        else:
            raise ProtocolError(f"{where}.{key}: expected a number, bool or string, got {type(v).__name__}")
    return out
