"""PBT against random search at equal compute, on real training (``study.rl``, ``study.lm``).

Both arms run the same experiment file with the same seed, so the same initial population (the
same sampled hyperparameters and the same initial weights); random search is that file with
``exploit.rule = "none"`` and ``explore.rule = "none"``: every member trains its initial
configuration for the same ``stop.steps``. Reported per task: the final best score (median and
IQR over seeds), the held-out score of that best model (a metric never selected on), wall time
and its ratio, steps trained, and the schedules PBT found, in a table and a figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_mq.tools.study.analysis import (
    Arm,
    Run,
    actions,
    best_hparams,
    best_record,
    best_schedule,
    bootstrap_ci,
    by_arm,
    compute_steps,
    curve,
    final_best,
    spread,
)
from pbt_mq.tools.study.report import COLORS, band, replayed
from pbt_mq.tools.study.tables import fmt_spread, table, verdict
from pbt_mq.tools.study.tasks import EXAMPLES, Fleet, Scale, best_metrics, initial_set, run_experiment, warm_up

RS = Arm("random search", ("exploit.rule=none", "explore.rule=none"))
ARMS = (Arm("PBT"), RS)
PB2 = Arm("PB2", ("explore.rule=pb2",))  # issue 23's arms on real tasks: the Bayesian explore of Parker-Holder et al.
ALONE = "best RS config alone"  # random search's best configuration per seed, retrained as a population of one


@dataclass(frozen=True)
class PairedTask:
    """One real training task of the study: what to run, and how to read and show its score."""

    name: str  # the study's name (``--only``), and the figure's file name
    file: str  # in workers/
    title: str  # the report's section heading
    label: str  # the score, in words, for tables and axes
    heldout: str  # a metric the trainable reports but PBT never selects on
    full: tuple[str, ...] = ()  # --set overrides for the full study (the file as is: none)
    quick: tuple[str, ...] = ()  # and for --quick, a CI smoke test
    unit: str = "steps"  # what one step is, for the table (e.g. "x 256 env steps")
    arms: tuple[Arm, ...] = ARMS  # "PBT" (the file as is) and random search first; issue 23's options after

    def run(self, fleet: Fleet, scale: Scale) -> list[Run]:
        file = EXAMPLES / self.file
        sets = self.quick if scale.quick else self.full
        warm_up(fleet, file, sets)
        runs = []
        chosen = scale.pick(self.arms, (RS.label,))
        for seed in range(scale.seeds):
            done = {}
            for arm in chosen if seed % 2 == 0 else chosen[::-1]:  # alternate, so drift in load evens out
                done[arm.label] = run_experiment(fleet, self.name, arm.label, file, [*sets, *arm.sets], seed)
            if RS.label in done:  # the best configuration random search found, trained alone: 1/n of the compute
                alone = [*sets, "population.size=1", initial_set([best_hparams(done[RS.label])]), *RS.sets]
                done[ALONE] = run_experiment(fleet, self.name, ALONE, file, alone, seed)
            for run in done.values():
                run.stats["best_metrics"] = best_metrics(fleet.r, run)
                runs.append(run)
        return runs

    # ---------------------------------------------------------------- the report

    def section(self, runs: Sequence[Run]) -> tuple[str, list[str]]:
        arms = by_arm(runs, self.name)
        rows = []
        for arm, rs in arms.items():
            rows.append([arm, fmt_spread([final_best(r) for r in rs]), " ".join(f"{final_best(r):.4g}" for r in rs),
                         fmt_spread([midway(r) for r in rs]),
                         fmt_spread([heldout(r, self.heldout) for r in rs]), fmt_spread([r.wall_s for r in rs], 3),
                         fmt_spread([compute_steps(r) for r in rs], 5),
                         f"{sum(actions(r)['exploit'] for r in rs) / len(rs):.1f}", replayed(rs)])
        text = table(["arm", f"final best {self.label}: median [IQR]", "per seed", "best halfway",
                      f"{self.heldout} of that model", "wall s", f"steps trained ({self.unit})", "exploits/run",
                      "decisions replayed"], rows)
        if RS.label in arms:
            text += "\n\n" + paired_table(arms, self.label)
        if "PBT" in arms:
            text += "\n\nSchedules PBT found (the final best model's, per seed: first -> last value, and how " \
                    "many times it changed):\n\n" + schedules_table(arms["PBT"])
        if "random search" in arms:
            text += "\n\nRandom search's best configuration per seed: " + "; ".join(
                " ".join(f"{k}={_short(v)}" for k, v in sorted((best_record(r).hparams or {}).items()))
                for r in arms["random search"])
        return text, self.targets(arms)

    def targets(self, arms: dict[str, list[Run]]) -> list[str]:
        if "PBT" not in arms or "random search" not in arms:
            return []
        pbt, rs = ([better(r, final_best(r)) for r in arms[a]] for a in ("PBT", "random search"))
        (pm, plo, phi), (rm, rlo, rhi) = spread(pbt), spread(rs)
        sign = 1.0 if arms["PBT"][0].cfg.mode == "max" else -1.0

        def iqr(lo: float, hi: float) -> str:
            return f"[{min(sign * lo, sign * hi):.4g}, {max(sign * lo, sign * hi):.4g}]"

        beats = plo > rhi
        how = ("PBT is better, outside the IQR overlap" if beats else
               "PBT's median is better, but the IQRs overlap" if pm > rm else "PBT is not better")
        wall = spread([r.wall_s for r in arms["PBT"]])[0] / spread([r.wall_s for r in arms["random search"]])[0]
        steps = spread([compute_steps(r) for r in arms["PBT"]])[0] / max(
            1, spread([compute_steps(r) for r in arms["random search"]])[0])
        held = {a: spread([heldout(r, self.heldout) for r in rs])[0] for a, rs in arms.items()}
        return [
            verdict(beats, f"{self.name}: PBT's median final {self.label} {sign * pm:.4g} {iqr(plo, phi)} vs random "
                     f"search's {sign * rm:.4g} {iqr(rlo, rhi)}: {how} ({len(pbt)} seed{'s' if len(pbt) != 1 else ''})"),
            f"- (info) {self.name}: PBT's median wall time = {wall:.2f} x random search's; it trained {steps - 1:+.0%} "
            "steps (an exploit resumes from the donor's last checkpoint, which may be behind the member)",
            f"- (info) {self.name}: {self.heldout} of the final best model (never selected on): PBT "
            f"{held['PBT']:.4g} vs random search {held['random search']:.4g} (medians)",
        ]

    def figure(self, out: Path, runs: Sequence[Run]) -> str | None:
        """The best member's score against step per arm, and the schedules PBT found."""
        try:
            from matplotlib.figure import Figure  # optional (the `plot` extra): tables need no figures
        except ImportError:
            return None
        arms = by_arm(runs, self.name)
        if not arms:
            return None
        names = list(next(iter(arms.values()))[0].cfg.spaces)
        cols = math.ceil(len(names) / 2)
        fig = Figure(figsize=(4.5 + 2.9 * cols, 5.6), dpi=100, layout="constrained")
        grid = fig.add_gridspec(2, 1 + cols, width_ratios=[1.7] + [1] * cols)
        ax = fig.add_subplot(grid[:, 0])
        for arm, rs in arms.items():
            band(ax, arm, rs)
        ax.set(xlabel="step", ylabel=f"best {self.label}", title=f"{self.name}: the best member's score (median, IQR)")
        ax.legend(loc="best")
        for i, name in enumerate(names):
            sax = fig.add_subplot(grid[i % 2, 1 + i // 2])
            schedule_panel(sax, name, arms)
        fig.suptitle("right: the final best model's schedule per seed, PBT (blue); random search's best "
                     "configuration per seed (grey dashes); y axes span the prior", fontsize=9)
        fig.savefig(out / f"{self.name}.png")
        return f"{self.name}.png"


def schedule_panel(ax: Any, name: str, arms: dict[str, list[Run]]) -> None:
    """PBT's final best model's value of ``name`` against step, one line per seed; random
    search's best configuration per seed as grey dashes."""
    space = arms[next(iter(arms))][0].cfg.spaces[name]
    for r in arms.get("PBT", []):
        sched = best_schedule(r)
        xs = [x for s in sched for x in (s["from_step"], s["to_step"])]
        ys = [s["hparams"][name] for s in sched for _ in (0, 1)]
        ax.plot(xs, ys, color=COLORS["PBT"], alpha=0.7, lw=1.3)
    for r in arms.get("random search", []):
        ax.axhline((best_record(r).hparams or {}).get(name, math.nan), color="tab:gray", ls="--", lw=0.8)
    if getattr(space, "log", False):
        ax.set_yscale("log")
    lo, hi = (space.low, space.high) if hasattr(space, "low") else (min(space.values), max(space.values))
    pad = (hi / lo) ** 0.04 if getattr(space, "log", False) else None
    ax.set_ylim(*((lo / pad, hi * pad) if pad else (lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo))))
    ax.set_title(name, fontsize=9)
    ax.tick_params(labelsize=7)


def paired_table(arms: dict[str, list[Run]], label: str) -> str:
    """Every arm against random search on the same seed (the same initial population): the mean paired
    difference (positive: the arm is better) with a seeded bootstrap 95% interval, wins, and worst seeds."""
    base = {r.seed: better(r, final_best(r)) for r in arms[RS.label]}
    worst_rs = min(base.values())
    sign = 1.0 if arms[RS.label][0].cfg.mode == "max" else -1.0
    rows = []
    for arm, rs in arms.items():
        if arm == RS.label:
            continue
        diffs = [better(r, final_best(r)) - base[r.seed] for r in rs if r.seed in base]
        lo, hi = bootstrap_ci(diffs)
        mean = sum(diffs) / len(diffs) if diffs else math.nan
        worst = min(better(r, final_best(r)) for r in rs)
        rows.append([arm, f"{sum(d > 0 for d in diffs)}/{len(diffs)} ({sum(d < 0 for d in diffs)} lost)",
                     f"{mean:+.4g}", f"[{lo:+.4g}, {hi:+.4g}]", f"{sign * worst:.4g} vs {sign * worst_rs:.4g}",
                     "yes" if lo > 0 else "no" if hi < 0 else "not resolved"])
    return table(["arm", "seeds it beats random search", f"mean paired gain in {label} (+: better)",
                  "95% bootstrap interval", "worst seed vs random search's worst", "better (interval above 0)"], rows)


def schedules_table(runs: Sequence[Run]) -> str:
    names = list(runs[0].cfg.spaces)
    rows = []
    for r in runs:
        sched = best_schedule(r)
        cells = []
        for n in names:
            vals = [s["hparams"][n] for s in sched]
            changes = sum(a != b for a, b in zip(vals, vals[1:], strict=False))
            cells.append(f"{_short(vals[0])} -> {_short(vals[-1])} ({changes})")
        rows.append([r.seed, *cells])
    return table(["seed", *names], rows)


def midway(run: Run) -> float:
    """The population's best score at half the budget (the last evaluation at or before it)."""
    points = curve(run)
    half = (run.cfg.stop.steps or max(points, default=0)) / 2
    early = [s for s in points if s <= half]
    return points[max(early)] if early else math.nan


def heldout(run: Run, metric: str) -> float:
    return float(run.stats.get("best_metrics", {}).get(metric, math.nan))


def better(run: Run, score: float) -> float:
    """Higher is better, in the metric's units up to sign (so medians and IQRs compare one way)."""
    return score if run.cfg.mode == "max" else -score


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
