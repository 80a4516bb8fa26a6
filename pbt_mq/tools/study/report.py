"""The report of ``pbt study``: markdown tables, the targets met or not, PNG figures, raw runs.

Everything is computed from the runs' lineage records (``study.analysis.Run``), so the numbers in
``results.md`` can be re-derived from ``runs.json``. matplotlib (the ``study`` extra) is
imported only to draw; without it the tables are still written.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pbt_mq.core.model import Action
from pbt_mq.tools.study.analysis import (
    SEGMENT_ACTIONS,
    TOY_TARGET,
    Run,
    actions,
    best_hparams,
    best_schedule,
    by_arm,
    compute_steps,
    curve,
    final_best,
    first_reach,
    mean_log,
    spread,
    tied_decisions,
)
from pbt_mq.tools.study.deceptive import deceptive_figure, deceptive_section
from pbt_mq.tools.study.pareto import pareto_figure, pareto_section
from pbt_mq.tools.study.rising import rising_figure, rising_section
from pbt_mq.tools.study.tables import fmt_spread, table, verdict

DASHED = {"neither", "random search", "fixed lr (grid)"}  # the no-PBT baselines
COLORS = {"PBT": "tab:blue", "PB2": "tab:purple", "exploit only": "tab:orange", "explore only": "tab:green",
          "neither": "tab:gray", "random search": "tab:gray", "fixed lr (grid)": "tab:gray",
          "best RS config alone": "tab:brown"}


# ---------------------------------------------------------------- per study


def reach_steps(runs: Sequence[Run], threshold: float = TOY_TARGET, within: int = 100) -> list[float]:
    """Step at which each run's best Q first reaches ``threshold`` (inf: not within ``within``)."""
    out = []
    for run in runs:
        s = first_reach(curve(run), threshold)
        out.append(float(s) if s is not None and s <= within else math.inf)
    return out


def toy_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, "toy")
    rows = []
    for arm, rs in arms.items():
        reach = reach_steps(rs)
        hit = sum(math.isfinite(x) for x in reach)
        rows.append([arm, f"{hit}/{len(rs)}", fmt_spread(reach, 3), fmt_spread([final_best(r) for r in rs]),
                     " ".join(str(actions(r)["exploit"]) for r in rs),
                     " ".join(f"{tied_decisions(r)}/{decisions(r)}" for r in rs), replayed(rs)])
    text = table(["arm", f"Q >= {TOY_TARGET} within 100 steps", "step reached: median [IQR]",
                  "final Q: median [IQR]", "exploits, per seed", "decisions facing an exact tie, per seed",
                  "decisions replayed"], rows)
    return text, toy_targets(arms)


def toy_targets(arms: dict[str, list[Run]]) -> list[str]:
    if "PBT" not in arms:
        return []
    pbt = reach_steps(arms["PBT"])
    hit, n = sum(math.isfinite(x) for x in pbt), len(pbt)
    med = spread(pbt)[0]
    others = {a: spread(reach_steps(rs))[0] for a, rs in arms.items() if a != "PBT"}
    sooner = all(med < m for m in others.values())
    detail = ", ".join(f"{a} {_steps(m)}" for a, m in others.items())
    return [
        verdict(hit >= math.ceil(0.9 * n), f"toy: PBT reaches Q >= {TOY_TARGET} within 100 steps in {hit}/{n} seeds (target >= 9/10)"),
        verdict(sooner, f"toy: PBT reaches it sooner than every ablation: median step {_steps(med)} vs {detail}"),
    ]


def digits_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, "digits")
    rows = []
    for arm, rs in arms.items():
        rows.append([arm, fmt_spread([final_best(r) for r in rs]),
                     " ".join(f"{final_best(r):.4f}" for r in rs),
                     fmt_spread([r.wall_s for r in rs], 3), fmt_spread([compute_steps(r) for r in rs], 5),
                     f"{sum(actions(r)['exploit'] for r in rs) / len(rs):.1f}", starts(rs), replayed(rs)])
    text = table(["arm", "final val. accuracy: median [IQR]", "per seed", "wall s: median [IQR]",
                  "steps trained", "exploits/run", "segment starts fresh/cold/warm", "decisions replayed"], rows)
    if "random search" in arms:
        best = [best_hparams(r) for r in arms["random search"]]
        text += "\n\nBest random-search configuration per seed (retrained alone above): " + "; ".join(
            " ".join(f"{k}={_short(v)}" for k, v in sorted(b.items())) for b in best)
    return text, digits_targets(arms)


def digits_targets(arms: dict[str, list[Run]]) -> list[str]:
    if "PBT" not in arms or "random search" not in arms:
        return []
    acc = {a: spread([final_best(r) for r in rs])[0] for a, rs in arms.items()}
    wall = {a: spread([r.wall_s for r in rs])[0] for a, rs in arms.items()}
    out = [
        verdict(acc["PBT"] > acc["random search"],
                 f"digits: PBT's median final accuracy {acc['PBT']:.4f} vs random search's {acc['random search']:.4f}"),
        wallverdict(arms["PBT"], arms["random search"]),
    ]
    if "best RS config alone" in acc:
        out.append(f"- (info) digits: the best random-search configuration retrained alone: median {acc['best RS config alone']:.4f}")
    if "PB2" in acc:
        out.append(f"- (info) digits: PB2 median final accuracy {acc['PB2']:.4f}, wall {wall['PB2']:.1f} s")
    return out


def wallverdict(pbt: Sequence[Run], rs: Sequence[Run]) -> str:
    """The wall-time target, and where PBT's extra time went (from the events' phase timings)."""

    def ratio(value: Any) -> float:
        base = spread([value(r) for r in rs])[0]
        return spread([value(r) for r in pbt])[0] / base if base else math.nan

    fresh = [spread([r.stats.get("starts", {}).get("fresh", 0) for r in arm])[0] for arm in (pbt, rs)]
    wall = ratio(lambda r: r.wall_s)
    return verdict(wall <= 1.10, (
        f"digits: PBT's median wall time = {wall:.2f} x random search's (target <= 1.10 x). Where it went: PBT trained "
        f"{ratio(compute_steps) - 1:+.0%} steps (an exploit resumes from the donor's last checkpoint: on average "
        f"{spread([rewind(r) for r in pbt])[0]:.1f} steps behind the member's own); its training took {ratio(lambda r: phase(r, 'train') / compute_steps(r)):.2f} x as long per step "
        f"(mean batch size {spread([mean_batch(r) for r in pbt])[0]:.0f} vs {spread([mean_batch(r) for r in rs])[0]:.0f}); "
        f"load+eval+save per segment took {ratio(lambda r: overhead_s(r) / max(1, r.stats.get('segments', 1))):.2f} x, "
        f"and it constructed {fresh[0]:.0f} trainables per run vs {fresh[1]:.0f}: exploits restart and re-import nothing"))


def rewind(run: Run) -> float:
    """Mean steps an exploit set its member back (own step minus the donor checkpoint's step)."""
    back = [r.step - r.parent_step for r in run.recs if r.action is Action.EXPLOIT and r.parent_step]
    return sum(back) / len(back) if back else 0.0


def phase(run: Run, name: str) -> float:
    return run.stats.get("phases_s", {}).get(name, 0.0)


def overhead_s(run: Run) -> float:
    """Worker seconds outside train(): loading, evaluating and saving checkpoints."""
    return phase(run, "load") + phase(run, "eval") + phase(run, "save")


def mean_batch(run: Run) -> float:
    """Step-weighted mean batch size the run trained with."""
    segs = [(r.step - r.start_step, (r.hparams or {}).get("batch_size", 0))
            for r in run.recs if r.action in SEGMENT_ACTIONS and r.hparams]
    total = sum(n for n, _ in segs)
    return sum(n * b for n, b in segs) / total if total else math.nan


def drift_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, "drift")
    rows = []
    for arm, rs in arms.items():
        before, after = zip(*(lr_phases(r) for r in rs), strict=True)
        rows.append([arm, fmt_spread([final_best(r) for r in rs]), " ".join(f"{final_best(r):.4g}" for r in rs),
                     fmt_spread(before, 3), fmt_spread(after, 3), fmt_spread([r.wall_s for r in rs], 3),
                     fmt_spread([compute_steps(r) for r in rs], 5), replayed(rs)])
    text = table(["arm", "final loss: median [IQR]", "per seed", "lr before the switch", "lr after",
                  "wall s", "steps trained", "decisions replayed"], rows)
    return text + "\n\n(lr columns: the step-weighted geometric mean lr of the final best model's schedule.)", drift_targets(arms)


def lr_phases(run: Run) -> tuple[float, float]:
    """Geometric mean lr of the final best model before and after the switch."""
    sched = best_schedule(run)
    switch = int(run.cfg.trainable_args.get("switch_step", 200))
    stop = run.cfg.stop.steps or switch * 2
    return mean_log(sched, "lr", 0, switch), mean_log(sched, "lr", switch, stop)


def drift_targets(arms: dict[str, list[Run]]) -> list[str]:
    fixed = next((a for a in arms if a.startswith("fixed")), None)
    if "PBT" not in arms or fixed is None:
        return []
    loss = {a: spread([final_best(r) for r in rs])[0] for a, rs in arms.items()}
    drops = [b / a for b, a in (lr_phases(r) for r in arms["PBT"])]
    drop = spread(drops)[0]
    out = [
        verdict(loss["PBT"] < loss[fixed], f"drift: PBT's median final loss {loss['PBT']:.4g} vs the best fixed lr's "
                 f"{loss[fixed]:.4g} ({loss[fixed] / loss['PBT']:.2f}x lower)"),
        verdict(drop >= 3.0, f"drift: PBT's schedule shows the change: its lr falls {drop:.1f}x (median over seeds) "
                 "across the switch (the optimum falls 10x; target: a visible fall, >= 3x)"),
    ]
    if "PB2" in loss:
        out.append(f"- (info) drift: PB2 median final loss {loss['PB2']:.4g}")
    return out


def decisions(run: Run) -> int:
    return sum(1 for rec in run.recs if rec.snapshot)


def starts(rs: Sequence[Run]) -> str:
    """Mean segment starts per run: fresh (constructed), cold (checkpoint loaded), warm (kept live)."""
    total = {k: sum(r.stats.get("starts", {}).get(k, 0) for r in rs) / len(rs) for k in ("fresh", "cold", "warm")}
    return "/".join(f"{v:.0f}" for v in total.values())


def replayed(rs: Sequence[Run]) -> str:
    """Whether lineage.replay_decisions re-derived every decision of every run from its log."""
    bad = sum(r.replay_mismatches for r in rs)
    return "all" if bad == 0 else f"{bad} mismatches"


def _steps(x: float) -> str:
    return "never (within 100)" if math.isinf(x) else f"{x:.0f}"


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- the report


def write_report(out: Path, runs: Sequence[Run], command: str, elapsed_s: float, workers: int, quick: bool,
                 extra: Sequence[Any] = ()) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    figures = draw(out, runs)
    parts = [f"# pbt study{' (--quick: a smoke test, not evidence)' if quick else ''}\n",
             f"Command: `{command}`; {len(runs)} experiments on {workers} pbt-worker processes, "
             f"{elapsed_s / 60:.1f} min in all ({platform.machine()}, Python {platform.python_version()}). "
             "Median [25th, 75th percentile] over seeds.\n"]
    targets: list[str] = []
    for title, section in (("The paper's toy (Q against step)", toy_section),
                           ("Digits: PBT vs random search at equal compute", digits_section),
                           ("Non-stationary: the best lr falls 10x halfway", drift_section),
                           ("Non-stationary, asynchronous: the loss jumps and the best lr rises 10x", rising_section),
                           ("Two objectives: accuracy against model size (hypervolume)", pareto_section),
                           ("A deceptive schedule: greedy now, worse later (known optimum)", deceptive_section)):
        study = section.__name__.split("_")[0]
        if not any(r.study == study for r in runs):
            continue
        text, verdicts = section(runs)
        targets += verdicts
        parts.append(f"## {title}\n\n{text}\n")
        parts += [f"![{name}]({name})\n" for name in figures if name.startswith(study)]
    for task in extra:  # study.paired's tasks (run.py passes them in: they import this module)
        if any(r.study == task.name for r in runs):
            text, verdicts = task.section(runs)
            targets += verdicts
            parts.append(f"## {task.title}\n\n{text}\n")
            parts += [f"![{name}]({name})\n" for name in [task.figure(out, runs)] if name]
    parts.append("## Targets\n\n" + "\n".join(targets) + "\n")
    path = out / "results.md"
    path.write_text("\n".join(parts))
    (out / "runs.json").write_text("[\n" + ",\n".join(json.dumps(run_json(r)) for r in runs) + "\n]\n")  # a run a line
    return path


def run_json(run: Run) -> dict[str, Any]:
    return {"study": run.study, "arm": run.arm, "seed": run.seed, "experiment": run.exp, "state": run.state,
            "wall_s": run.wall_s, "final_best": final_best(run), "steps_trained": compute_steps(run),
            "actions": dict(actions(run)), "replay_mismatches": run.replay_mismatches,
            "starts": run.stats.get("starts", {}), "best_metrics": run.stats.get("best_metrics", {}), "phases_s": run.stats.get("phases_s", {}), "curve": {str(k): v for k, v in curve(run).items()},
            "best_schedule": best_schedule(run), "final_points": run.stats.get("final_points"),
            "worker_idle_fraction": run.stats.get("worker_idle_fraction"),
            "exploit_ops": [op for rec in run.recs if rec.action is Action.EXPLOIT for op in rec.ops or []]}


# ---------------------------------------------------------------- figures


def draw(out: Path, runs: Sequence[Run]) -> list[str]:
    """Write the PNGs; returns their file names (none without matplotlib)."""
    try:
        from matplotlib.figure import Figure  # optional (the `plot` extra): tables need no figures
    except ImportError:
        return []
    names = []
    for study, fn in (("toy", _toy_figure), ("digits", _digits_figure), ("drift", _drift_figure),
                      ("rising", rising_figure), ("pareto", pareto_figure), ("deceptive", deceptive_figure)):
        if any(r.study == study for r in runs):
            fig = Figure(figsize=(13, 4.2), dpi=100, layout="constrained")
            fn(fig, by_arm(runs, study))
            name = f"{study}.png"
            fig.savefig(out / name)
            names.append(name)
    return names


def band(ax: Any, arm: str, rs: Sequence[Run], log: bool = False) -> None:
    """Median over seeds of the population's best score per step, and its 25-75% band."""
    steps = sorted({s for r in rs for s in curve(r)})
    rows = [[curve(r).get(s, math.nan) for s in steps] for r in rs]
    med, lo, hi = zip(*(spread([row[i] for row in rows]) for i in range(len(steps))), strict=True)
    color = COLORS.get(arm)
    ax.plot(steps, med, label=f"{arm} (n={len(rs)})", color=color, lw=2, ls="--" if arm in DASHED else "-")
    ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)
    if log:
        ax.set_yscale("log")


def _toy_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for arm, rs in arms.items():
        band(ax, arm, rs)
    ax.axhline(TOY_TARGET, color="k", ls=":", lw=1, label=f"Q = {TOY_TARGET}")
    ax.set(xlabel="step", ylabel="best Q in the population", ylim=(-0.1, 1.25),
           title="The paper's toy: Q(θ) = 1.2 − |θ|², 2 members (median and 25–75% over seeds)")
    ax.legend(loc="lower right")


def _digits_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[2, 1, 1])
    for arm, rs in arms.items():
        if arm != "best RS config alone":
            band(ax1, arm, rs)
    ax1.set(xlabel="step", ylabel="best validation accuracy", title="Digits: best member per step", ylim=(0.8, 1.0))
    ax1.legend(loc="lower right")
    for i, (arm, rs) in enumerate(arms.items()):
        for ax, values in ((ax2, [final_best(r) for r in rs]), (ax3, [r.wall_s for r in rs])):
            ax.scatter([i] * len(values), values, color=COLORS.get(arm), alpha=0.7)
            ax.hlines(spread(values)[0], i - 0.3, i + 0.3, color="k")
    for ax, title in ((ax2, "final accuracy per seed"), (ax3, "wall time (s) per seed")):
        ax.set_xticks(range(len(arms)), [a.replace(" config alone", "\nalone") for a in arms], fontsize=7)
        ax.set_title(title)


def _drift_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    ax1, *sched_axes = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    some = next(iter(arms.values()))[0]
    switch = int(some.cfg.trainable_args.get("switch_step", 200))
    gain = float(some.cfg.trainable_args.get("gain", 10.0))
    for arm, rs in arms.items():
        band(ax1, arm, rs, log=True)
    ax1.set(xlabel="step", ylabel="best loss (lower is better)", title="Non-stationary: best member per step")
    ax1.legend(loc="upper right")
    ax1.axvline(switch, color="k", ls=":", lw=1)
    stop = some.cfg.stop.steps or 2 * switch
    for ax, arm in zip(sched_axes, ("PBT", "PB2"), strict=True):
        for r in arms.get(arm, []):
            sched = best_schedule(r)
            xs = [x for s in sched for x in (s["from_step"], s["to_step"])]
            ys = [s["hparams"]["lr"] for s in sched for _ in (0, 1)]
            ax.plot(xs, ys, color=COLORS[arm], alpha=0.7, lw=1.3)
        ax.plot([0, switch, switch, stop], [1.0, 1.0, 1 / gain, 1 / gain], "k--", lw=1, label="1 / top curvature")
        ax.axvline(switch, color="k", ls=":", lw=1)
        ax.set(yscale="log", xlabel="step", ylabel="learning rate", ylim=(5e-4, 5),
               title=f"{arm}: lr of the final best model, per seed")
        ax.legend(loc="lower left")
