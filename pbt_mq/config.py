"""The experiment file (TOML): parsed into a frozen ``Experiment``, every error with its key path.

The same parser reads the file at ``pbt launch`` and the JSON copy that travels
with the experiment in Redis, so arbiters and workers see exactly what was
launched. See the README's config reference for every key.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .rules import ExploitSpec, ExploreSpec
from .space import AnySpace, CategoricalSpace, FloatSpace, IntSpace, PerturbSpec

TRAINABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_POPULATION = 100_000


class ConfigError(ValueError):
    """A broken experiment file; str() is one line: ``key.path: what is wrong``."""


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


@dataclass(frozen=True)
class GCSettings:
    """Checkpoint garbage collection: delete what no member, queued segment or pending event needs."""

    enabled: bool = True
    min_age_s: float = 600.0  # an upload whose event never came is abandoned after this long
    interval_s: float = 10.0
    lineage_depth: int = -1  # ancestors kept per member: -1 all (a live lineage is never cut), 0 none


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
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)

    def higher_is_better(self, metric_value: float) -> float:
        """The leaderboard score: the metric, negated when lower is better."""
        return metric_value if self.mode == "max" else -metric_value


# ---------------------------------------------------------------- entry points


def load_file(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    raw.setdefault("name", _default_name(p.stem))
    for item in overrides:
        apply_override(raw, item)
    return parse(raw)


def load_json(text: str) -> Experiment:
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: the stored experiment is not valid JSON ({exc})") from None
    return parse(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply ``section.key=value``; the value is read as TOML, else taken as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected section.key=value")
    path, _, text = item.partition("=")
    parts = [p.strip() for p in path.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {item}: empty key in {path!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    node = raw
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {item}: {part} is not a table")
        node = nxt
    node[parts[-1]] = value


def parse(raw: dict[str, Any]) -> Experiment:
    r = _Reader(raw, "")
    name = r.str("name", default="experiment")
    if not NAME_RE.match(name):
        raise ConfigError(f"name: {name!r} must be 1-64 letters, digits, '_' or '-'")
    trainable = r.str("trainable")
    if not TRAINABLE_RE.match(trainable):
        raise ConfigError(f"trainable: {trainable!r} must be an import path like 'package.module:Class'")
    spaces = _spaces(r.table("hparams"))
    pop = r.table("population")
    size = pop.int("size", low=1, high=MAX_POPULATION)
    initial = _initial(pop, spaces, size)
    pop.done()
    exp = Experiment(
        name=name,
        trainable=trainable,
        metric=r.str("metric"),
        mode=r.choice("mode", ("max", "min"), default="max"),
        seed=r.int("seed", default=0, low=0, high=2**63 - 1),
        population=size,
        initial=initial,
        ready=_ready(r.table("ready")),
        stop=_stop(r.table("stop")),
        exploit=_exploit(r.table("exploit", optional=True)),
        explore=_explore(r.table("explore", optional=True)),
        spaces=spaces,
        trainable_args=_plain(r.raw_table("trainable_args"), "trainable_args"),
        store=r.str("store", default=None),
        queue=r.str("queue", default="pbt"),
        worker=_worker(r.table("worker", optional=True)),
        gc=_gc(r.table("gc", optional=True)),
        raw=raw,
    )
    r.done()
    return exp


# ---------------------------------------------------------------- sections


def _ready(t: _Reader) -> Ready:
    ready = Ready(
        steps=t.int("steps", default=None, low=1), seconds=t.float("seconds", default=None, low=1e-3)
    )
    t.done()
    if (ready.steps is None) == (ready.seconds is None):
        raise ConfigError("ready: set exactly one of steps and seconds")
    return ready


def _stop(t: _Reader) -> Stop:
    stop = Stop(
        steps=t.int("steps", default=None, low=1),
        seconds=t.float("seconds", default=None, low=1e-3),
        score=t.float("score", default=None),
    )
    t.done()
    if stop.steps is None and stop.seconds is None and stop.score is None:
        raise ConfigError("stop: set at least one of steps, seconds and score")
    return stop


def _exploit(t: _Reader) -> ExploitSpec:
    spec = ExploitSpec(
        rule=t.choice("rule", ("truncation", "tournament", "none"), default="truncation"),
        quantile=t.float("quantile", default=0.2, low=1e-9, high=0.5),
        ties=t.choice("ties", ("strict", "rank", "random"), default="strict"),
    )
    t.done()
    return spec


def _explore(t: _Reader) -> ExploreSpec:
    factors = t.get("factors", [0.8, 1.2])
    if (
        not isinstance(factors, list)
        or not factors
        or not all(_is_number(f) and 0 < f < math.inf for f in factors)
    ):
        raise ConfigError(f"{t.path}factors: must be a non-empty list of positive numbers, got {factors!r}")
    perturb = PerturbSpec(
        factors=tuple(float(f) for f in factors),
        mode=t.choice("perturb", ("multiply", "noise"), default="multiply"),
        noise_std=t.float("noise_std", default=0.1, low=1e-12, high=10.0),
    )
    spec = ExploreSpec(
        rule=t.choice("rule", ("perturb", "resample", "pb2", "none"), default="perturb"),
        resample_probability=t.float("resample_probability", default=0.25, low=0.0, high=1.0),
        perturb=perturb,
    )
    t.done()
    if spec.rule == "pb2" and importlib.util.find_spec("numpy") is None:  # PB2's GP (pbt_mq/pb2.py)
        raise ConfigError(f"{t.path}rule: 'pb2' needs numpy: pip install 'pbt-mq[pb2]'")
    return spec


def _gc(t: _Reader) -> GCSettings:
    g = GCSettings(
        enabled=t.bool("enabled", default=True),
        min_age_s=t.float("min_age_s", default=600.0, low=0.0),
        interval_s=t.float("interval_s", default=10.0, low=0.1),
        lineage_depth=t.int("lineage_depth", default=-1, low=-1),
    )
    t.done()
    return g


def _worker(t: _Reader) -> WorkerSettings:
    w = WorkerSettings(
        segment_timeout_s=t.int("segment_timeout_s", default=3600, low=1),
        max_retries=t.int("max_retries", default=2, low=0, high=100),
        overlap_upload=t.bool("overlap_upload", default=False),
    )
    t.done()
    return w


def _spaces(t: _Reader) -> dict[str, AnySpace]:
    spaces: dict[str, AnySpace] = {}
    for name in t.keys():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
            raise ConfigError(f"hparams.{name}: name must be an identifier")
        spaces[name] = _space(t.table(name))
    if not spaces:
        raise ConfigError("hparams: define at least one hyperparameter to tune")
    return spaces


def _space(t: _Reader) -> AnySpace:
    kind = t.choice("type", ("float", "int", "categorical"))
    if kind == "categorical":
        values = t.get("values")
        if not isinstance(values, list) or len(values) < 1:
            raise ConfigError(f"{t.path}values: must be a non-empty list")
        if not all(isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"{t.path}values: entries must be numbers, booleans or strings")
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ConfigError(f"{t.path}values: entries must be finite (nan never equals itself)")
        if len({(type(v), v) for v in values}) != len(values):
            raise ConfigError(f"{t.path}values: entries must be distinct")
        space: AnySpace = CategoricalSpace(tuple(values), ordered=t.bool("ordered", default=False))
        t.done()
        return space
    log = t.bool("log", default=False)
    perturb = t.choice("perturb", ("multiply", "noise"), default=None)
    if kind == "int":
        low, high = t.int("low"), t.int("high")
    else:
        low, high = t.float("low"), t.float("high")
    if not low < high:
        raise ConfigError(f"{t.path}low: must be < high (got low={low}, high={high})")
    if log and low <= 0:
        raise ConfigError(f"{t.path}low: must be > 0 for a log space (got {low})")
    t.done()
    if kind == "int":
        return IntSpace(int(low), int(high), log=log, perturb_mode=perturb)
    return FloatSpace(float(low), float(high), log=log, perturb_mode=perturb)


def _initial(pop: _Reader, spaces: dict[str, AnySpace], size: int) -> tuple[dict[str, Any], ...]:
    initial = pop.get("initial", [])
    if not isinstance(initial, list) or len(initial) > size:
        raise ConfigError(f"population.initial: must be a list of at most size={size} tables")
    out = []
    for i, entry in enumerate(initial):
        where = f"population.initial[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table like {{lr = 0.01}}")
        for k, v in entry.items():
            if k not in spaces:
                raise ConfigError(f"{where}.{k}: not a hyperparameter defined under [hparams]")
            if isinstance(spaces[k], FloatSpace) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
                entry[k] = v
            if not spaces[k].contains(v):
                raise ConfigError(f"{where}.{k}: {v!r} is outside hparams.{k}")
        out.append(dict(entry))
    return tuple(out)


# ---------------------------------------------------------------- reader


def _plain(value: Any, where: str) -> Any:
    """Check that ``value`` survives the JSON copy in Redis (TOML dates do not)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]")
    elif not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: must be a string, number, boolean, array or table, got {type(value).__name__}")
    return value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _default_name(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", stem).strip("-_") or "experiment"
    return cleaned[:64]


_MISSING = object()


class _Reader:
    """Reads one table, remembering which keys were used so leftovers are reported."""

    def __init__(self, data: Any, path: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{path.rstrip('.') or 'file'}: must be a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def keys(self) -> list[str]:
        self.used.update(self.data)
        return list(self.data)

    def get(self, key: str, default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            spare = [k for k in self.data if k not in self.used and isinstance(k, str)]
            hint = difflib.get_close_matches(key, spare, n=1)
            tip = f" (found '{hint[0]}': a typo?)" if hint else ""
            raise ConfigError(f"{self.path}{key}: required{tip}")
        return default

    def table(self, key: str, optional: bool = False) -> _Reader:
        value = self.get(key, {} if optional else _MISSING)
        return _Reader(value, f"{self.path}{key}.")

    def raw_table(self, key: str) -> dict[str, Any]:
        value = self.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}{key}: must be a table")
        return dict(value)

    def str(self, key: str, default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{self.path}{key}: must be a non-empty string, got {v!r}")
        return v

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.path}{key}: must be true or false, got {v!r}")
        return v

    def choice(self, key: str, options: tuple[str, ...], default: Any = _MISSING) -> Any:
        v = self.get(key, default)
        if v is default and default is not _MISSING:
            return v
        if v not in options:
            raise ConfigError(f"{self.path}{key}: must be one of {', '.join(options)}; got {v!r}")
        return v

    def int(self, key: str, default: Any = _MISSING, low: int | None = None, high: int | None = None) -> Any:
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.path}{key}: must be an integer, got {v!r}")
        self._bounds(key, v, low, high)
        return v

    def float(
        self, key: str, default: Any = _MISSING, low: float | None = None, high: float | None = None
    ) -> Any:
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if not _is_number(v) or not math.isfinite(v):
            raise ConfigError(f"{self.path}{key}: must be a finite number, got {v!r}")
        self._bounds(key, v, low, high)
        return float(v)

    def _bounds(self, key: str, v: float, low: float | None, high: float | None) -> None:
        if low is not None and v < low:
            raise ConfigError(f"{self.path}{key}: must be >= {low}, got {v}")
        if high is not None and v > high:
            raise ConfigError(f"{self.path}{key}: must be <= {high}, got {v}")

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            key = extra[0]
            hint = difflib.get_close_matches(key, sorted(self.used), n=1)
            tip = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{self.path}{key}: unknown key{tip}")
