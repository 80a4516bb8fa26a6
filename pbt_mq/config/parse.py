"""The experiment file (TOML): parsed into a frozen ``Experiment``, every error with its key path.

The same parser reads the file at ``pbt launch`` and the JSON copy that travels
with the experiment in Redis, so arbiters and workers see exactly what was
launched. See the README's config reference for every key.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pbt_mq.config.experiment import Experiment, GCSettings, LineageSettings, Ready, Stop, Tracking, WorkerSettings
from pbt_mq.config.reader import ConfigError, Reader, is_number
from pbt_mq.core.space import AnySpace, CategoricalSpace, FloatSpace, IntSpace, PerturbSpec
from pbt_mq.rules.base import ExploitSpec, ExploreSpec
from pbt_mq.rules.crossover import window as crossover_window
from pbt_mq.rules.plugins import BOARD_MAX
from pbt_mq.rules.registry import EXPLOIT_RULES, EXPLORE_RULES, missing_requirement

TRAINABLE_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_POPULATION = 10_000  # launched in ~3 s, pbt status in ~1.5 s (3 MB of JSON): tests/hostile/test_bounds.py
WINDOW_MAX = 64  # exploit.window: the most scores a member's window keeps (decide.lua parses it per decision)
PB2_HISTORY = 128  # lineage records PB2 reads from Redis for one proposal (rules.pb2)


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
    r = Reader(raw, "")
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
    metrics, modes = _objectives(r)
    exp = Experiment(
        name=name,
        trainable=trainable,
        metric=metrics[0],
        mode=modes[0],
        metrics=metrics,
        modes=modes,
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
        tracking=_tracking(r.table("tracking", optional=True)),
        lineage=_lineage(r.table("lineage", optional=True)),
        raw=raw,
    )
    r.done()
    in_python = exp.exploit.rule == "ttest" or exp.exploit.subpopulations or ":" in exp.exploit.rule
    if in_python and (exp.exploit.rule == "ttest" or exp.exploit.subpopulations or exp.exploit.window > 1) \
            and exp.population > BOARD_MAX:
        raise ConfigError(f"population.size: exploit.rule = ttest, exploit.subpopulations, and a plug-in rule with "
                          f"exploit.window > 1 rank in Python on a board of at most {BOARD_MAX} members; got "
                          f"{exp.population} (use truncation or tournament)")
    if exp.multi and (exp.exploit.window > 1 or exp.exploit.rule == "ttest"):
        raise ConfigError("exploit.window / ttest: a window of scores needs one metric; with several metrics "
                          "(multi-objective) leave exploit.window at 1 and use truncation or tournament")
    if exp.explore.rule == "crossover" and exp.lineage.redis_window < crossover_window(exp.population):
        raise ConfigError(f"lineage.redis_window: crossover reads the newest {crossover_window(exp.population)} records "
                          f"from Redis (4 per member); keep at least that many there (got {exp.lineage.redis_window})")
    if exp.explore.rule == "pb2" and exp.lineage.redis_window < PB2_HISTORY:
        raise ConfigError(f"lineage.redis_window: PB2 reads the newest {PB2_HISTORY} records from Redis;"
                          f" keep at least {PB2_HISTORY} there (got {exp.lineage.redis_window})")
    if exp.multi and exp.stop.score is not None:
        raise ConfigError("stop.score: a target score needs one metric; with several metrics (multi-objective) "
                          "there is none yet: stop on steps or seconds")
    if exp.multi and exp.explore.rule == "pb2":
        raise ConfigError("explore.rule: pb2 models one metric; with several metrics (multi-objective) use perturb, "
                          "resample or a plug-in")
    return exp


# ---------------------------------------------------------------- sections


def _objectives(r: Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``metric``: a name, or a list of 2-8 distinct names (multi-objective); ``mode``: "max"/"min" for all,
    or one per metric."""
    metric = r.get("metric")
    if isinstance(metric, list):
        if not 2 <= len(metric) <= 8 or not all(isinstance(m, str) and m for m in metric) or len(set(metric)) < len(metric):
            raise ConfigError(f"metric: a list must hold 2 to 8 distinct metric names, got {metric!r}")
        metrics = tuple(metric)
    else:
        metrics = (r.str("metric"),)
    mode = r.get("mode", "max")
    modes = tuple(mode) if isinstance(mode, list) else (mode,) * len(metrics)
    if len(modes) != len(metrics):
        raise ConfigError(f"mode: one per metric ({len(metrics)}), got {len(modes)}: {mode!r}")
    if any(m not in ("max", "min") for m in modes):
        raise ConfigError(f"mode: must be one of max, min{' (each)' if len(metrics) > 1 else ''}; got {mode!r}")
    return metrics, modes


def _ready(t: Reader) -> Ready:
    ready = Ready(
        steps=t.int("steps", default=None, low=1), seconds=t.float("seconds", default=None, low=1e-3)
    )
    t.done()
    if (ready.steps is None) == (ready.seconds is None):
        raise ConfigError("ready: set exactly one of steps and seconds")
    return ready


def _stop(t: Reader) -> Stop:
    stop = Stop(
        steps=t.int("steps", default=None, low=1),
        seconds=t.float("seconds", default=None, low=1e-3),
        score=t.float("score", default=None),
    )
    t.done()
    if stop.steps is None and stop.seconds is None and stop.score is None:
        raise ConfigError("stop: set at least one of steps, seconds and score")
    return stop


def _exploit(t: Reader) -> ExploitSpec:
    spec = ExploitSpec(
        rule=_rule(t, EXPLOIT_RULES, "truncation"),
        quantile=t.float("quantile", default=0.2, low=1e-9, high=0.5),
        ties=t.choice("ties", ("strict", "rank", "random"), default="strict"),
        compare=t.choice("compare", ("step", "latest"), default="step"),
        burn_in_steps=t.int("burn_in_steps", default=0, low=0),
        synch=t.bool("synch", default=False),
        window=t.int("window", default=1, low=1, high=WINDOW_MAX),
        level=t.float("level", default=0.05, low=1e-6, high=0.5),
        subpopulations=_subpopulations(t),
    )
    t.done()
    if spec.rule == "ttest" and spec.window < 2:
        raise ConfigError(f"{t.path}window: the ttest rule compares the last k scores of two members; set "
                          f"window = k >= 2 (the paper used the last 10 episodes), got {spec.window}")
    return spec


def _subpopulations(t: Reader) -> tuple[int, ...]:
    """``subpopulations = [1, 4, 0]``: a period (in ready points) per sub-population; 0: never exploited."""
    raw = t.get("subpopulations", [])
    ok = isinstance(raw, list) and len(raw) <= 16 and all(isinstance(p, int) and not isinstance(p, bool)
                                                          and 0 <= p <= 1000 for p in raw)
    if not ok or len(raw) == 1 or (raw and not any(raw)):
        raise ConfigError(f"{t.path}subpopulations: a list of 2 to 16 exploit periods in ready points (1: every ready "
                          f"point, 4: every 4th, 0: never), not all 0, e.g. [1, 4, 0]; got {raw!r}")
    return tuple(raw)


def _explore(t: Reader) -> ExploreSpec:
    factors = t.get("factors", [0.8, 1.2])
    if (
        not isinstance(factors, list)
        or not factors
        or not all(is_number(f) and 0 < f < math.inf for f in factors)
    ):
        raise ConfigError(f"{t.path}factors: must be a non-empty list of positive numbers, got {factors!r}")
    perturb = PerturbSpec(
        factors=tuple(float(f) for f in factors),
        mode=t.choice("perturb", ("multiply", "noise"), default="multiply"),
        noise_std=t.float("noise_std", default=0.1, low=1e-12, high=10.0),
    )
    spec = ExploreSpec(
        rule=_rule(t, EXPLORE_RULES, "perturb"),
        resample_probability=t.float("resample_probability", default=0.25, low=0.0, high=1.0),
        perturb=perturb,
    )
    t.done()
    return spec


def _rule(t: Reader, registry: dict[str, Any], default: str) -> str:
    """A registered rule's name, whose requirements (PB2: numpy) are installed here, or a plug-in's
    "module:callable" (its form only: importing it is for arbiters that allow it, ``rules.plugins``)."""
    name = t.str("rule", default=default)
    problem = missing_requirement(registry, name)
    if problem:
        raise ConfigError(f"{t.path}rule: {problem}")
    return name


def _gc(t: Reader) -> GCSettings:
    g = GCSettings(
        enabled=t.bool("enabled", default=True),
        min_age_s=t.float("min_age_s", default=600.0, low=0.0),
        interval_s=t.float("interval_s", default=10.0, low=0.1),
        lineage_depth=t.int("lineage_depth", default=-1, low=-1),
    )
    t.done()
    return g


WANDB_PROJECT_RE = re.compile(r"^[^/\\#?%:]{1,128}$")


def _tracking(t: Reader) -> Tracking:
    mlflow = t.str("mlflow", default=None)
    wandb = t.str("wandb", default=None)
    t.done()
    if mlflow is not None and not mlflow.strip():
        raise ConfigError(f"{t.path}mlflow: an MLflow tracking URI, e.g. 'file:///srv/mlruns' or 'http://mlflow:5000'")
    if wandb is not None and not WANDB_PROJECT_RE.match(wandb):
        raise ConfigError(f"{t.path}wandb: {wandb!r} is not a W&B project name (1-128 characters, none of / \\ # ? % :)")
    return Tracking(mlflow=mlflow, wandb=wandb)


def _lineage(t: Reader) -> LineageSettings:
    settings = LineageSettings(redis_window=t.int("redis_window", default=10_000, low=1))
    t.done()
    return settings


def _worker(t: Reader) -> WorkerSettings:
    w = WorkerSettings(
        segment_timeout_s=t.int("segment_timeout_s", default=3600, low=1),
        max_retries=t.int("max_retries", default=2, low=0, high=100),
        overlap_upload=t.bool("overlap_upload", default=False),
        on_failure=t.choice("on_failure", ("replace", "fail"), default="replace"),
        max_replacements=t.int("max_replacements", default=3, low=0, high=1000),
    )
    t.done()
    return w


def _spaces(t: Reader) -> dict[str, AnySpace]:
    spaces: dict[str, AnySpace] = {}
    for name in t.keys():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", name):
            raise ConfigError(f"hparams.{name}: name must be an identifier")
        spaces[name] = _space(t.table(name))
    if not spaces:
        raise ConfigError("hparams: define at least one hyperparameter to tune")
    return spaces


def _space(t: Reader) -> AnySpace:
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


def _initial(pop: Reader, spaces: dict[str, AnySpace], size: int) -> tuple[dict[str, Any], ...]:
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


def _default_name(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", stem).strip("-_") or "experiment"
    return cleaned[:64]


