"""What ``pbt study`` reads from a finished run: curves, the final best, schedules, compute (pure)."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.model import Action, Lineage
from pbt_mq.state.lineage import ancestry, schedule

TOY_TARGET = 1.19
SEGMENT_ACTIONS = (Action.CONTINUE, Action.EXPLOIT, Action.DONE)


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
    recs: list[Lineage]
    wall_s: float
    state: str
    stats: dict[str, Any] = field(default_factory=dict)  # observe.stats.experiment_stats
    replay_mismatches: int = 0  # decisions the log alone does not reproduce (state.lineage.replay_decisions)




def segments(recs: Sequence[Lineage]) -> list[Lineage]:
    """The trained segments of a run (one per decision that recorded a score)."""
    return [rec for rec in recs if rec.action in SEGMENT_ACTIONS and rec.ckpt_key]


def oriented(run: Run, score: float) -> float:
    """Higher is better; non-finite is worst."""
    return run.cfg.higher_is_better(score) if math.isfinite(score) else -math.inf


def curve(run: Run) -> dict[int, float]:
    """The population's best score at each step, in the metric's own units."""
    best: dict[int, float] = {}
    for rec in segments(run.recs):
        step, score = rec.step, rec.score
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


def best_record(run: Run) -> Lineage:
    last = max(rec.step for rec in segments(run.recs))
    ends = [rec for rec in segments(run.recs) if rec.step == last]
    return max(ends, key=lambda rec: (oriented(run, rec.score), rec.member))


def best_hparams(run: Run) -> dict[str, Any]:
    return dict(best_record(run).hparams or {})


def best_schedule(run: Run) -> list[dict[str, Any]]:
    """The hyperparameter schedule of the final best checkpoint, through every exploit."""
    return schedule(ancestry(run.recs, best_record(run).ckpt_key))


def compute_steps(run: Run) -> int:
    """Training steps actually run, over all segments: the compute an arm used."""
    return sum(rec.step - rec.start_step for rec in segments(run.recs))


def tied_decisions(run: Run) -> int:
    """Decisions whose leaderboard (the lineage snapshot) held another member at exactly the
    member's own score: a strict "better" rule can never exploit there."""
    n = 0
    for rec in run.recs:
        board = dict(rec.leaderboard or [])
        own = board.pop(rec.member, None)
        n += own is not None and own in board.values()
    return n


def actions(run: Run) -> Counter:
    return Counter(str(rec.action) if rec.action else "?" for rec in run.recs)


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


def bootstrap_ci(xs: Sequence[float], n: int = 4000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so a report is reproducible)."""
    v = [x for x in xs if math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(v) for _ in v) / len(v) for _ in range(n))
    return means[int((1 - level) / 2 * (n - 1))], means[int((1 + level) / 2 * (n - 1))]


def log_ratios(rs: Sequence[Run], base: Sequence[Run]) -> list[float]:
    """Per seed, ln(the arm's final best / the baseline's on the same seed): < 0, the arm ended lower."""
    by_seed = {r.seed: final_best(r) for r in base}
    return [math.log(final_best(r) / by_seed[r.seed]) for r in rs
            if r.seed in by_seed and final_best(r) > 0 and by_seed[r.seed] > 0]
