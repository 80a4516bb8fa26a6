"""The Redis data model: the states, and every hash and stream record pbt-mq writes, typed.

Each record is a frozen dataclass whose fields carry their Redis encoding and a line of
documentation (the redis-cli reference in ``keys.py`` and the README is checked against
these by ``tests/core/test_model.py``). Writers build a partial update with
``Record.fields(...)`` (names checked, values encoded one way), readers get a typed record
from ``Record.decode(hash)``; nothing else reads or writes a field by its string name, except
the Lua scripts, whose headers name the fields they touch.

Every field is plain text a person can read with ``HGETALL``, except ``cmd`` in a member's
hash: it is the member's current segment command exactly as its RQ job carries it (msgpack,
``core.protocol.SegmentCommand``), so the reaper can queue the very same job again and a
stale copy can recognise itself, with the same validating decoder as the job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from functools import cache
from typing import Any, ClassVar, TypeVar

from pbt_mq.core.codec import check_shape, decode_value, encode_value, shown

SCHEMA = 3  # the record layout of this release; a meta hash without "schema" was written by release 1
# 2: exploit.compare defaults to "step"; 3: checkpoints in store.format and worker.on_failure defaults to
# "replace" (state.experiment.load_config)


class _StrEnum(str, Enum):
    """A state as Redis stores it: its value is the text in the hash (``str(x)`` is the value too)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class MemberState(_StrEnum):
    QUEUED = "queued"  # its segment job waits in a queue
    RUNNING = "running"  # a worker claimed the job and trains it
    READY = "ready"  # its ready event is published; the arbiters own it until they decide
    WAITING = "waiting"  # exploit.synch: reported its ready point; decided once every live member did
    DONE = "done"  # reached the stop condition (or its experiment ended)
    FAILED = "failed"  # gave up: retries exhausted, or its event was dead-lettered

    @property
    def ended(self) -> bool:
        return self in (MemberState.DONE, MemberState.FAILED)


class ExperimentState(_StrEnum):
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self is not ExperimentState.RUNNING


class Action(_StrEnum):
    """What a lineage record says the arbiter did with a ready event."""

    CONTINUE = "continue"
    EXPLOIT = "exploit"
    DONE = "done"
    FAILED = "failed"
    REPLACED = "replaced"  # its segment failed for good; it restarts from a donor, or fresh (worker.on_failure)


class Why(_StrEnum):
    """Where a segment's starting state comes from (``SegmentCommand.why``)."""

    START = "start"
    CONTINUE = "continue"
    EXPLOIT = "exploit"
    RETRY = "retry"


# ---------------------------------------------------------------- the codec


def _f(kind: Any, doc: str, default: Any = None) -> Any:
    """A record field: its Redis encoding (str, int, float, "json", bytes or a state enum) and its doc."""
    return field(default=default, metadata={"kind": kind, "doc": doc})


R = TypeVar("R", bound="Record")


class Record:
    """Shared by the records below: encode a partial update, decode a whole hash or stream entry."""

    TITLE: ClassVar[str] = ""
    problems: ClassVar[tuple[str, ...]] = ()  # set on a decoded record whose fields did not all decode

    @classmethod
    @cache
    def spec(cls) -> dict[str, tuple[Any, str]]:
        """field name -> (encoding, doc), in declaration order: the reference is rendered from it."""
        return {f.name: (f.metadata["kind"], f.metadata["doc"]) for f in fields(cls) if "kind" in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def fields(cls, **values: Any) -> dict[str, Any]:
        """The Redis form of a partial update; an unknown name is a bug, caught here and not in Redis."""
        spec = cls.spec()
        out = {}
        for name, value in values.items():
            if name not in spec:
                raise KeyError(f"{cls.__name__} has no field {name!r}")
            out[name] = encode_value(spec[name][0], value)
        return out

    @classmethod
    def decode(cls: type[R], raw: Mapping[Any, Any]) -> R:
        """A typed record from ``HGETALL`` (or a stream entry's fields); absent fields take their defaults.

        Every record read from Redis comes through here, and anyone may have written it (redis-cli, another
        release), so this never raises: a field that does not decode to its type takes its default, and the
        record's ``problems`` say which and what it held, for the caller to isolate and report."""
        text = {(k.decode(errors="replace") if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
        kw, problems = {}, []
        for f in fields(cls):  # type: ignore[arg-type]
            if "kind" not in f.metadata or f.name not in text:
                continue
            kind = f.metadata["kind"]
            try:
                value = decode_value(kind, text[f.name])
                check_shape(f.type, kind, value, text[f.name])
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                problems.append(f"{f.name} = {shown(text[f.name])} ({exc})")
                value = None
            if value is None and f.default is not MISSING:
                value = f.default
            kw[f.name] = value
        rec = cls(**kw)
        if problems:
            object.__setattr__(rec, "problems", tuple(problems))
        return rec

    @classmethod
    def names(cls, *names: str) -> tuple[str, ...]:
        """Field names for HMGET, checked against the record."""
        unknown = [n for n in names if n not in cls.spec()]
        if unknown:
            raise KeyError(f"{cls.__name__} has no field {unknown[0]!r}")
        return names

    @classmethod
    def pick(cls: type[R], names: tuple[str, ...], values: list[Any]) -> R:
        """A typed record from an HMGET reply of ``names`` (fields not asked for take their defaults)."""
        return cls.decode(dict(zip(cls.names(*names), values, strict=True)))

    @classmethod
    def read(cls: type[R], client: Any, key: str, *names: str) -> R:
        """HGETALL (no names) or HMGET of ``names``, typed."""
        if not names:
            return cls.decode(client.hgetall(key))
        return cls.pick(names, client.hmget(key, *cls.names(*names)))

    def encode(self) -> dict[str, Any]:
        """Every field that is set, in Redis form (None fields are left out)."""
        return {name: encode_value(kind, getattr(self, name)) for name, (kind, _) in self.spec().items()
                if getattr(self, name) is not None}


@dataclass(frozen=True)
class Member(Record):
    """``pbt:{EXP}:member:{M}``: one member's state, its current segment and its scored checkpoint."""

    TITLE = "member"
    state: MemberState | None = _f(MemberState, "queued | running | ready | waiting | done | failed")
    seq: int = _f(int, "the member's segment counter; its current segment's seq (the idempotency key)", 0)
    step: int = _f(int, "the step its current segment starts from (the final step once done)", 0)
    hparams: dict[str, Any] = _f("json", "hyperparameters of its current segment (JSON)", None)
    why: str = _f(str, "where the current segment starts from: start | continue | exploit | retry", "")
    job: str = _f(str, "RQ job id of the current segment (EXP_M_SEQ, _aN: a retry, _rN: requeued)", "")
    cmd: bytes | None = _f(bytes, "the current segment command, msgpack: binary on purpose (see model.py)")
    queue: str = _f(str, "the RQ queue the job went to (a worker's own queue QUEUE@ID for a warm start)", "")
    queued_ms: int | None = _f(int, "when the current job was queued")
    started_ms: int | None = _f(int, "when a worker claimed it")
    updated_ms: int | None = _f(int, "when an arbiter last decided for this member")
    limbo_ms: int | None = _f(int, "set by the reaper when the job is neither queued nor claimed")
    worker: str = _f(str, "the worker running it (or that ran its last segment)", "")
    score: float | None = _f(float, "its latest score, in the metric's own units (may be nan)")
    scored_step: int | None = _f(int, "the step that score was measured at")
    ckpt_key: str = _f(str, "the store key of its latest checkpoint", "")
    ckpt_sha256: str = _f(str, "that checkpoint's sha256", "")
    ckpt_size: int | None = _f(int, "that checkpoint's size in bytes")
    ckpt_hparams: dict[str, Any] | None = _f("json", "the hyperparameters that checkpoint was trained with (JSON)")
    train_s: float | None = _f(float, "seconds of training its checkpoint embodies")
    parent: str = _f(str, "the donor of its last exploit", "")
    parent_step: int | None = _f(int, "the donor's step at that exploit")
    last_exploit: str = _f(str, "DONOR@STEP: whom it copied, at which of its own steps", "")
    reason: str = _f(str, "why it is done", "")
    error: str = _f(str, "the last failure (a traceback, or why the reaper requeued it)", "")
    attempt: int = _f(int, "retries of the current segment after the trainable raised", 0)
    reaped: int = _f(int, "requeues of the current segment after its worker died", 0)
    replaced: int = _f(int, "times it was replaced in a row, without getting past the step it failed at "
                            "(worker.on_failure)", 0)
    replaced_step: int | None = _f(int, "the step of the segment that failed last (a failure at or below it "
                                        "is one more in a row)")
    window: str = _f(str, "exploit.window > 1: the last scores (leaderboard units, space separated) of the "
                          "checkpoint its current segment starts from; its next score joins them", "")


@dataclass(frozen=True)
class Meta(Record):
    """``pbt:{EXP}:meta``: the experiment as launched, and its state."""

    TITLE = "meta"
    state: ExperimentState | None = _f(ExperimentState, "running | done | stopped | failed")
    reason: str = _f(str, "why it ended", "")
    name: str = _f(str, "the experiment file's name", "")
    created_ms: int | None = _f(int, "launch time")
    done_ms: int | None = _f(int, "when it ended")
    population: int = _f(int, "number of members", 0)
    seed: int = _f(int, "the experiment seed every decision's rng derives from", 0)
    queue: str = _f(str, "the RQ queue name its segments go to", "")
    store: str = _f(str, "the checkpoint store URL (no credentials)", "")
    metric: str = _f(str, "the metric ranked", "")
    mode: str = _f(str, "max | min", "max")
    finished: int = _f(int, "members done or failed", 0)
    config: str = _f(str, "the experiment as launched (JSON), overrides included", "")
    schema: int = _f(int, "the record layout it was launched with (absent: 1, the first release)", 1)


@dataclass(frozen=True)
class Lineage(Record):
    """An entry of ``pbt:{EXP}:lineage``: one per decision, append-only; replays every decision."""

    TITLE = "lineage"
    member: str = _f(str, "the member decided for", "")
    seq: int = _f(int, "the segment decided (with member: unique)", 0)
    start_step: int = _f(int, "the step the segment started from", 0)
    step: int = _f(int, "the step it reached", 0)
    score: float = _f(float, "its score, in the metric's own units", math.nan)
    action: Action | None = _f(Action, "continue | exploit | done | failed | replaced")
    start_key: str = _f(str, "the checkpoint it started from ('' for a fresh start)", "")
    ckpt_key: str = _f(str, "the checkpoint it wrote", "")
    hparams: dict[str, Any] | None = _f("json", "its hyperparameters (JSON)")
    next_hparams: dict[str, Any] | None = _f("json", "the next segment's hyperparameters (JSON)")
    parent: str = _f(str, "the donor, for an exploit", "")
    parent_step: int | None = _f(int, "the donor checkpoint's step")
    next_start_key: str = _f(str, "the checkpoint the next segment starts from", "")
    ops: list[str] | None = _f("json", "the mutations, e.g. 'lr: 0.01 --(x0.8)--> 0.008' (JSON)")
    reason: str = _f(str, "why a member is done, failed or replaced (a failure's traceback, its end kept)", "")
    worker: str = _f(str, "the worker that trained the segment", "")
    declined_donor: str | None = _f(str, "a donor the rule chose but that had finished or has no checkpoint")
    board: str | None = _f(str, "what the member was ranked against: step | time (others' scores at the same "
                                "ready point) or latest (their last scores)")
    board_at: int | None = _f(int, "the ready point of that board: the step, or the train time in ready periods")
    seed: int | None = _f(int, "a replacement that starts fresh: the seed its trainable is built with")
    objectives: list[float] | None = _f("json", "several metrics: the segment's value of each, in the order of "
                                                "metric = [...] (JSON)")
    n: int | None = _f(int, "members on the board the rule saw")
    worse: int | None = _f(int, "of them, ranked below the member")
    better: int | None = _f(int, "of them, ranked above the member")
    k: int | None = _f(int, "the truncation size, ceil(quantile * n) capped at n/2")
    snapshot: list[list[Any]] | None = _f("json", "the board the rule saw, [[member, score], ...] best first, "
                                                  "higher is better (populations up to 64; JSON)")
    windows: dict[str, list[float]] | None = _f("json", "exploit.rule = ttest: the windows of scores it compared, "
                                                        "member -> [score, ...] (JSON)")
    timings: dict[str, float] | None = _f("json", "the segment's seconds from its ready event: load, train, eval, "
                                                  "save, wait, and 1 for how it started: warm, cached, cold or fresh (JSON)")
    id: str = ""  # the stream entry id, set by ``from_entry``

    @classmethod
    def from_entry(cls, entry_id: bytes | str, raw: Mapping[Any, Any]) -> Lineage:
        rec = cls.decode(raw)
        object.__setattr__(rec, "id", entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
        return rec

    @property
    def leaderboard(self) -> list[tuple[str, float]] | None:
        """The snapshot as (member, score) pairs: what the exploit rule saw."""
        return None if self.snapshot is None else [(str(m), float(s)) for m, s in self.snapshot]

    @property
    def chosen_donor(self) -> str | None:
        """The donor the exploit rule picked: the exploit's parent, or the finished one it declined."""
        return self.parent or self.declined_donor or None


@dataclass(frozen=True)
class Heartbeat(Record):
    """``pbt:worker:{ID}``: a live worker's heartbeat (expires three beats after it stops)."""

    TITLE = "worker"
    host: str = _f(str, "its host name", "")
    pid: int | None = _f(int, "its process id")
    device: str = _f(str, "its torch device", "")
    queue: str = _f(str, "the queue name it serves", "")
    current: str = _f(str, "EXP/MEMBER/SEQ it trains now ('' when idle)", "")
    beat_ms: int | None = _f(int, "its last beat")
    segments: int = _f(int, "segments it finished", 0)
    warm: int = _f(int, "of them, continued on the live model", 0)
    cold: int = _f(int, "of them, loaded from the store", 0)
    cached: int = _f(int, "of them, loaded from a checkpoint it held in memory (no download)", 0)
    cache_bytes: int = _f(int, "bytes of checkpoints it holds in memory now", 0)
    cache_limit: int = _f(int, "the most it may hold (PBT_CACHE_MB; 0: no cache)", 0)
    overhead_ms: float | None = _f(float, "pbt-mq's mean time per segment on this worker besides load, train, "
                                          "evaluate and save (taking the job, claiming, publishing)")


@dataclass(frozen=True)
class DeadLetter(Record):
    """An entry of ``pbt:{EXP}:dead`` (or ``pbt:dead``): what could not be used, and why."""

    TITLE = "dead"
    reason: str = _f(str, "what was wrong", "")
    source: str = _f(str, "where it came from: a stream, a queue, or 'store'", "")
    entry: str = _f(str, "the stream entry id, RQ job id or checkpoint key", "")
    raw: bytes | None = _f(bytes, "the refused payload itself (at most 64 KiB): binary, it failed to decode")
    worker: str = _f(str, "the worker that refused a job", "")


@dataclass(frozen=True)
class TrackingState(Record):
    """``pbt:{EXP}:tracking``: the worker that sends the experiment to its trackers, and how far it got."""

    TITLE = "tracking"
    holder: str = _f(str, "the worker sending now (its lease is renewed every second or so)", "")
    lease_ms: int | None = _f(int, "when the holder's lease lapses: then another worker takes over")
    events: str = _f(str, "the last entry of the events stream sent (metrics, hyperparameters)", "")
    lineage: str = _f(str, "the last entry of the lineage stream sent (exploits)", "")
    sent: int = _f(int, "entries sent", 0)
    lost: int = _f(int, "entries a tracker refused, or that were trimmed before they were sent", 0)
    done_ms: int | None = _f(int, "when the ended experiment was sent in full and its runs were closed")
    problem: str = _f(str, "what keeps a tracker from working ('' once it works again): pbt status shows it", "")
    problem_ms: int | None = _f(int, "when that was seen")


@dataclass(frozen=True)
class ScoredCheckpoint:
    """A value of ``pbt:{EXP}:ckpts`` (JSON): the checkpoint a member's leaderboard score belongs to,
    what a donor gives. decide.lua hands it over as is."""

    key: str
    sha256: str
    size: int
    step: int
    hparams: dict[str, Any]
    train_s: float | None = None  # the training time the checkpoint embodies (absent from release 1's)
    worker: str = ""  # the worker that wrote it, and may hold it in memory (absent before the cache)

    def to_json(self) -> str:
        d = {"key": self.key, "sha256": self.sha256, "size": self.size, "step": self.step, "hparams": self.hparams}
        if self.train_s is not None:
            d["train_s"] = self.train_s
        if self.worker:
            d["worker"] = self.worker
        return json.dumps(d, sort_keys=True)

    @classmethod
    def read(cls, raw: bytes | str | None) -> ScoredCheckpoint | None:
        """``from_json`` for a value anyone may have written: None when it is not a scored checkpoint."""
        if raw is None:
            return None
        try:
            rec = cls.from_json(raw)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return None
        return rec if rec.key and isinstance(rec.hparams, dict) else None

    @classmethod
    def from_json(cls, raw: bytes | str) -> ScoredCheckpoint:
        d = json.loads(raw)
        train_s = d.get("train_s")
        worker = d.get("worker")
        return cls(str(d["key"]), str(d["sha256"]), int(d["size"]), int(d["step"]), dict(d.get("hparams") or {}),
                   None if train_s is None else float(train_s), worker if isinstance(worker, str) else "")


RECORDS: tuple[type[Record], ...] = (Meta, Member, Lineage, Heartbeat, DeadLetter, TrackingState)
