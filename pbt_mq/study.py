"""``pbt study``: does PBT work here? Four comparisons on the real system, one command.

1. The paper's toy (workers/toy.toml): PBT vs exploit-only vs explore-only vs neither.
2. Digits (workers/digits.toml): PBT vs random search at equal compute (the same initial
   population with exploit/explore off) vs the best random-search configuration trained
   alone, and PB2.
3. A non-stationary task (workers/nonstationary.toml, the best lr falls 10x halfway):
   PBT vs the best of a grid of fixed learning rates at equal compute, and PB2.

Every run is a real experiment on a real fleet (``pbt_mq.local.fleet``: a private
redis-server, one pbt-arbiter and N pbt-worker processes). Runs go one at a time, so every
arm gets the same warm workers; curves, schedules and compute are read back from each
experiment's lineage log. Output: ``DIR/results.md``, ``DIR/*.png``, ``DIR/runs.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workers as _workers

from .config import Experiment, load_file
from .experiment import DONE, launch
from .keys import Keys
from .lineage import ancestry, records, replay_decisions, schedule
from .redisconn import connect
from .stats import experiment_stats

EXAMPLES = Path(_workers.__file__).resolve().parent
TOY_TARGET = 1.19


@dataclass(frozen=True)
class Arm:
    label: str
    sets: tuple[str, ...] = ()


@dataclass
class Run:
    """One finished experiment, as read back from Redis."""

    study: str
    arm: str
    seed: int
    exp: str
    cfg: Experiment
    recs: list[dict[str, Any]]
    wall_s: float
    state: str
    stats: dict[str, Any] = field(default_factory=dict)  # pbt_mq.stats.experiment_stats
    replay_mismatches: int = 0  # decisions the log alone does not reproduce (lineage.replay_decisions)


@dataclass
class Fleet:
    """A live fleet (pbt_mq.local.fleet) and where its checkpoints go."""

    r: Any
    procs: list  # of subprocess.Popen: the arbiter, then the workers
    wd: Path
    timeout_s: float
    runs: list[Run] = field(default_factory=list)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Scale:
    """How much to run: the full study, or the CI smoke test (--quick)."""

    toy_seeds: int
    seeds: int
    digits: tuple[str, ...]
    drift: tuple[str, ...]


FULL = Scale(toy_seeds=10, seeds=5, digits=(), drift=())
QUICK = Scale(
    toy_seeds=2,
    seeds=1,
    digits=("population.size=4", "stop.steps=100"),
    drift=("population.size=4", "stop.steps=200", "trainable_args.switch_step=100"),
)



def toy_arms(noise_std: float) -> tuple[Arm, ...]:
    """The paper's four: explore-only walks h by the same noise PBT's explore uses (workers/toy.py)."""
    return (
        Arm("PBT"),
        Arm("exploit only", ("explore.rule=none",)),
        Arm("explore only", ("exploit.rule=none", "explore.rule=none", f"trainable_args.explore_std={noise_std!r}")),
        Arm("neither", ("exploit.rule=none", "explore.rule=none")),
    )


DIGITS_ARMS = (
    Arm("PBT"),
    Arm("random search", ("exploit.rule=none", "explore.rule=none")),
    Arm("PB2", ("explore.rule=pb2",)),
)
DRIFT_ARMS = (
    Arm("PBT"),
    Arm("fixed lr (grid)", ("exploit.rule=none", "explore.rule=none")),  # initial: set from the prior
    Arm("PB2", ("explore.rule=pb2",)),
)


# ---------------------------------------------------------------- running


def run_experiment(fleet: Fleet, study: str, arm: str, file: Path, sets: Sequence[str], seed: int) -> Run:
    """Launch one experiment on the fleet, wait for it, read its lineage, drop its checkpoints."""
    from .local import _watch

    cfg = load_file(file, [*sets, f"seed={seed}"])
    store = fleet.wd / "checkpoints"
    exp = launch(fleet.r, cfg, f"file://{store}")
    final = _watch(fleet.r, exp, fleet.procs, time.monotonic(), fleet.timeout_s, live=False)
    meta = fleet.r.hmget(Keys(exp).meta, "created_ms", "done_ms")
    wall_s = (int(meta[1]) - int(meta[0])) / 1000
    recs = records(fleet.r, exp)
    run = Run(study, arm, seed, exp, cfg, recs, wall_s, final["state"], experiment_stats(fleet.r, exp),
              len(replay_decisions(cfg, recs)))
    shutil.rmtree(store / exp, ignore_errors=True)
    fleet.runs.append(run)
    print(f"  {study:<7} {arm:<18} seed {seed}: {run.state} in {wall_s:5.1f} s, "
          f"final best {cfg.metric} {final_best(run):.4g}", flush=True)
    return run


def warm_up(fleet: Fleet, file: Path, sets: Sequence[str]) -> None:
    """One short unrecorded run, so every worker has imported the trainable before anything is timed."""
    from .local import _watch

    base = [*sets, f"population.size={max(2, len(fleet.procs) - 1)}", "exploit.rule=none"]  # procs: arbiter + workers
    cfg = load_file(file, [*base, f"stop.steps={load_file(file, base).ready.steps or 1}"])
    exp = launch(fleet.r, cfg, f"file://{fleet.wd / 'checkpoints'}")
    _watch(fleet.r, exp, fleet.procs, time.monotonic(), fleet.timeout_s, live=False)


def toml_value(v: Any) -> str:
    """A TOML literal for a --set override (strings quoted, floats exact)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def initial_set(configs: Sequence[dict[str, Any]]) -> str:
    tables = ", ".join("{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in sorted(c.items())) + "}" for c in configs)
    return f"population.initial=[{tables}]"


def lr_grid(cfg: Experiment, n: int) -> list[dict[str, float]]:
    """n learning rates evenly spaced in log over the prior: the fixed-value baseline."""
    space = cfg.spaces["lr"]
    lo, hi = math.log(space.low), math.log(space.high)
    return [{"lr": math.exp(lo + (hi - lo) * i / (n - 1))} for i in range(n)]


def toy_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "toy.toml"
    warm_up(fleet, file, ())
    arms = toy_arms(load_file(file).explore.perturb.noise_std)
    return [run_experiment(fleet, "toy", arm.label, file, arm.sets, seed)
            for arm in arms for seed in range(scale.toy_seeds)]


def digits_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "digits.toml"
    warm_up(fleet, file, scale.digits)
    runs = []
    for seed in range(scale.seeds):
        order = DIGITS_ARMS if seed % 2 == 0 else DIGITS_ARMS[::-1]  # alternate, so drift in load evens out
        done = {arm.label: run_experiment(fleet, "digits", arm.label, file, [*scale.digits, *arm.sets], seed)
                for arm in order}
        runs += done.values()
        best = best_hparams(done["random search"])
        alone = [*scale.digits, "population.size=1", initial_set([best]), *DIGITS_ARMS[1].sets]
        runs.append(run_experiment(fleet, "digits", "best RS config alone", file, alone, seed))
    return runs


def drift_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "nonstationary.toml"
    cfg = load_file(file, list(scale.drift))
    grid = initial_set(lr_grid(cfg, cfg.population))
    warm_up(fleet, file, scale.drift)
    runs = []
    for seed in range(scale.seeds):
        for arm in DRIFT_ARMS if seed % 2 == 0 else DRIFT_ARMS[::-1]:
            extra = (grid,) if arm.label.startswith("fixed") else ()
            runs.append(run_experiment(fleet, "drift", arm.label, file, [*scale.drift, *arm.sets, *extra], seed))
    return runs


# ---------------------------------------------------------------- analysis (pure)


def segments(recs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained segments of a run (one per decision that recorded a score)."""
    return [rec for rec in recs if rec.get("action") in ("continue", "exploit", "done") and rec.get("score")]


def oriented(run: Run, score: float) -> float:
    """Higher is better; non-finite is worst."""
    return run.cfg.higher_is_better(score) if math.isfinite(score) else -math.inf


def curve(run: Run) -> dict[int, float]:
    """The population's best score at each step, in the metric's own units."""
    best: dict[int, float] = {}
    for rec in segments(run.recs):
        step, score = int(rec["step"]), float(rec["score"])
        if step not in best or oriented(run, score) > oriented(run, best[step]):
            best[step] = score
    return dict(sorted(best.items()))


def first_reach(points: dict[int, float], threshold: float) -> int | None:
    """The first step at which the (higher-is-better) curve reaches ``threshold``."""
    return next((s for s, v in sorted(points.items()) if v >= threshold), None)


def final_best(run: Run) -> float:
    """The best score among the segments that ended at the last step reached."""
    points = curve(run)
    return points[max(points)] if points else math.nan


def best_record(run: Run) -> dict[str, Any]:
    last = max(int(rec["step"]) for rec in segments(run.recs))
    ends = [rec for rec in segments(run.recs) if int(rec["step"]) == last]
    return max(ends, key=lambda rec: (oriented(run, float(rec["score"])), rec["member"]))


def best_hparams(run: Run) -> dict[str, Any]:
    return json.loads(best_record(run)["hparams"])


def best_schedule(run: Run) -> list[dict[str, Any]]:
    """The hyperparameter schedule of the final best checkpoint, through every exploit."""
    return schedule(ancestry(run.recs, best_record(run)["ckpt_key"]))


def compute_steps(run: Run) -> int:
    """Training steps actually run, over all segments: the compute an arm used."""
    return sum(int(rec["step"]) - int(rec.get("start_step") or 0) for rec in segments(run.recs))


def tied_decisions(run: Run) -> int:
    """Decisions whose leaderboard (the lineage snapshot) held another member at exactly the
    member's own score: a strict "better" rule can never exploit there."""
    n = 0
    for rec in run.recs:
        board = dict((m, s) for m, s in json.loads(rec.get("snapshot") or "[]"))
        own = board.pop(rec.get("member"), None)
        n += own is not None and own in board.values()
    return n


def actions(run: Run) -> Counter:
    return Counter(rec.get("action", "?") for rec in run.recs)


def mean_log(sched: Sequence[dict[str, Any]], name: str, lo: int, hi: int) -> float:
    """Step-weighted geometric mean of hyperparameter ``name`` over steps [lo, hi)."""
    total = weight = 0.0
    for s in sched:
        w = max(0, min(hi, s["to_step"]) - max(lo, s["from_step"]))
        total += w * math.log(s["hparams"][name])
        weight += w
    return math.exp(total / weight) if weight else math.nan


def spread(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, 25th, 75th percentile); inf-safe, NaN for no data."""
    v = sorted(x for x in xs if not math.isnan(x))
    if not v:
        return math.nan, math.nan, math.nan
    return statistics.median(v), _quantile(v, 0.25), _quantile(v, 0.75)


def _quantile(v: Sequence[float], q: float) -> float:
    pos = q * (len(v) - 1)
    i = int(math.floor(pos))
    j = min(i + 1, len(v) - 1)
    if math.isinf(v[i]) or math.isinf(v[j]):
        return v[i] if pos == i else v[j]
    return v[i] + (v[j] - v[i]) * (pos - i)


def by_arm(runs: Sequence[Run], study: str) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.study == study:
            out.setdefault(run.arm, []).append(run)
    return out


# ---------------------------------------------------------------- entry point


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="study", help="output directory (results.md, PNGs, runs.json)")
    p.add_argument("--quick", action="store_true", help="small and fast: a CI smoke test, not evidence")
    p.add_argument("--workers", type=int, default=2, help="pbt-worker processes (default 2)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm for digits and drift (default 5; quick 1)")
    p.add_argument("--only", default="toy,digits,drift", help="comma-separated subset of toy,digits,drift")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on one experiment after this many seconds")
    p.set_defaults(fn=run)


STUDIES = {"toy": toy_study, "digits": digits_study, "drift": drift_study}


def run(a: argparse.Namespace) -> int:
    from .local import fleet
    from .study_report import write_report

    chosen = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STUDIES))
    if unknown or not chosen:
        print(f"pbt study: error: --only: unknown study {(unknown or [''])[0]!r}", file=sys.stderr)
        return 2
    scale = QUICK if a.quick else FULL
    if a.seeds:
        scale = dataclasses.replace(scale, seeds=a.seeds)
    out = Path(a.out).resolve()
    wd = out / "work"
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with fleet(wd, a.workers) as (url, procs):
        f = Fleet(connect(url), procs, wd, a.timeout)
        for name in chosen:
            print(f"pbt study: {name}", flush=True)
            STUDIES[name](f, scale)
    elapsed = time.monotonic() - t0
    write_report(out, f.runs, command_line(a, chosen), elapsed, a.workers, quick=a.quick)
    ok = all(r.state == DONE for r in f.runs)
    shutil.rmtree(wd if ok else wd / "checkpoints", ignore_errors=True)  # logs stay when a run failed
    print(f"pbt study: {len(f.runs)} experiments in {elapsed:.0f} s; see {out / 'results.md'}")
    return 0 if ok else 1


def command_line(a: argparse.Namespace, chosen: Sequence[str]) -> str:
    """The command that reproduces this report, for its header."""
    parts = ["pbt study", "--quick" if a.quick else "", f"-o {a.out}",
             f"--only {','.join(chosen)}" if set(chosen) != set(STUDIES) else "",
             f"--seeds {a.seeds}" if a.seeds else "", f"--workers {a.workers}" if a.workers != 2 else ""]
    return " ".join(p for p in parts if p)
