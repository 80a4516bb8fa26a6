"""The experiment as every process sees it: a frozen ``Experiment``, parsed once from the file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pbt_mq.core.space import AnySpace
from pbt_mq.rules.base import ExploitSpec, ExploreSpec


@dataclass(frozen=True)
class Ready:
    steps: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Stop:
    steps: int | None = None
    seconds: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class WorkerSettings:
    segment_timeout_s: int = 3600
    max_retries: int = 2
    overlap_upload: bool = False  # publish once serialized and hashed; upload while the next segment trains
    on_failure: str = "replace"  # a segment failing for good: "replace" the member (a donor's state, or fresh), or "fail" it
    max_replacements: int = 3  # replacements in a row without getting past the failed step; the next failure fails it


@dataclass(frozen=True)
class GCSettings:
    """Checkpoint garbage collection: delete what no member, queued segment or pending event needs."""

    enabled: bool = True
    min_age_s: float = 600.0  # an upload whose event never came is abandoned after this long
    interval_s: float = 10.0
    lineage_depth: int = -1  # ancestors kept per member: -1 all (a live lineage is never cut), 0 none


@dataclass(frozen=True)
class Tracking:
    """``[tracking]``: where workers send each member's run (``worker.tracking``); None: nowhere."""

    mlflow: str | None = None  # an MLflow tracking URI
    wandb: str | None = None  # a W&B project (WANDB_MODE=offline is honoured)

    def __bool__(self) -> bool:
        return bool(self.mlflow or self.wandb)


@dataclass(frozen=True)
class LineageSettings:
    """How much of the lineage log Redis keeps: the newest ``redis_window`` records; the arbiters move
    older ones to the store in compacted chunks, and every reader reads both (``state.lineage.records``)."""

    redis_window: int = 10_000


@dataclass(frozen=True)
class Experiment:
    name: str
    trainable: str
    metric: str
    mode: str
    seed: int
    population: int
    initial: tuple[dict[str, Any], ...]
    ready: Ready
    stop: Stop
    exploit: ExploitSpec
    explore: ExploreSpec
    spaces: dict[str, AnySpace]
    trainable_args: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    queue: str = "pbt"
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    gc: GCSettings = field(default_factory=GCSettings)
    metrics: tuple[str, ...] = ()  # every objective (metric = its first); several: multi-objective (rules.pareto)
    modes: tuple[str, ...] = ()  # "max" | "min" per objective
    tracking: Tracking = field(default_factory=Tracking)
    lineage: LineageSettings = field(default_factory=LineageSettings)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def multi(self) -> bool:
        """Several objectives: members are ordered by non-dominated rank, then crowding distance."""
        return len(self.metrics) > 1

    def objectives(self, metrics: dict[str, float]) -> tuple[float, ...] | None:
        """An event's objective vector, oriented (higher is better each); None if one is missing or not finite."""
        values = [metrics.get(name, math.nan) for name in self.metrics]
        if not all(math.isfinite(v) for v in values):
            return None
        return tuple(v if mode == "max" else -v for v, mode in zip(values, self.modes, strict=True))

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)

    def higher_is_better(self, metric_value: float) -> float:
        """The leaderboard score: the metric, negated when lower is better."""
        return metric_value if self.mode == "max" else -metric_value

    def ready_point(self, step: int, train_s: float) -> int:
        """The ready point a member at (``step``, ``train_s``) reported: its step, or with ``[ready] seconds``
        its train time in ready periods (what boards and synchronous rounds are keyed by)."""
        if self.ready.seconds is not None:
            return round(train_s / self.ready.seconds)
        return step

    def first_target(self, step: int) -> dict[str, Any]:
        """The target of a segment starting at ``step``: the next ready point, capped by the stop
        (keyword arguments of ``SegmentCommand``)."""
        if self.ready.seconds is not None:
            return {"seconds": self.ready.seconds}
        until = step + (self.ready.steps or 1)
        if self.stop.steps is not None:
            until = min(until, self.stop.steps)
        return {"until_step": max(until, step + 1)}
