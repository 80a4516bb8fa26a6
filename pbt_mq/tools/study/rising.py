"""``pbt study``'s "rising" task: the data shift mid-run, everyone's loss jumps, and the best learning
rate rises 10x (workers/rising.toml). It tests what asynchronous PBT compares: a member that reaches
the shift first scores far worse than the others' scores from before it. Ranked on the others'
latest scores (exploit.compare = "latest") it copies a pre-shift checkpoint with a small learning
rate; ranked on the scores at its own step (compare = "step", the default) it cannot.

Arms: PBT with compare = "step", with "latest", with synchronous rounds (``exploit.synch``: the full
information, at the cost of idle workers: the "worker idle" column), and the same population with its
initial values kept (exploit and explore off), many seeds each: a tuner users trust has no catastrophic tail, so the
report gives the worst seed beside the median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pbt_mq.core.model import Action
from pbt_mq.tools.study.analysis import (
    Arm,
    Run,
    best_schedule,
    bootstrap_ci,
    by_arm,
    compute_steps,
    curve,
    final_best,
    log_ratios,
    mean_log,
    spread,
)
from pbt_mq.tools.study.tables import fmt_spread, table, verdict
from pbt_mq.tools.study.tasks import EXAMPLES, Fleet, Scale, run_experiment, warm_up

STEP, LATEST, FIXED = "PBT, compare = step", "PBT, compare = latest", "fixed population"
SYNCH = "PBT, synch"  # exploit.synch: every ready point decided once all members reported it (issue 17)
# issue 23's options, each on its own, and together: do they stop the collapse onto one lr after the shift?
WINDOW, TTEST, SUBPOP, CROSS, ALL = ("PBT, window 4", "PBT, ttest", "PBT, subpopulations", "PBT, crossover",
                                     "PBT, window+subpop+crossover")
ARMS = (
    Arm(STEP, ("exploit.compare=step",)),
    Arm(LATEST, ("exploit.compare=latest",)),
    Arm(SYNCH, ("exploit.compare=step", "exploit.synch=true")),
    Arm(FIXED, ("exploit.rule=none", "explore.rule=none")),
    Arm(WINDOW, ("exploit.window=4",)),
    Arm(TTEST, ("exploit.rule=ttest", "exploit.window=4")),
    Arm(SUBPOP, ("exploit.subpopulations=[1, 4, 0]",)),
    Arm(CROSS, ("explore.rule=crossover",)),
    Arm(ALL, ("exploit.window=4", "exploit.subpopulations=[1, 4, 0]", "explore.rule=crossover")),
)
COLORS = {STEP: "tab:blue", LATEST: "tab:red", SYNCH: "tab:green", FIXED: "tab:gray", WINDOW: "tab:orange",
          TTEST: "tab:brown", SUBPOP: "tab:purple", CROSS: "tab:olive", ALL: "tab:cyan"}


def rising_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "rising.toml"
    warm_up(fleet, file, scale.rising)
    runs = []
    arms = scale.pick(ARMS, (FIXED, STEP))
    for seed in range(100, 100 + scale.rising_seeds):  # not the seeds the task was calibrated on (0-3)
        for arm in arms if seed % 2 == 0 else arms[::-1]:
            runs.append(run_experiment(fleet, "rising", arm.label, file, [*scale.rising, *arm.sets], seed))
    return runs


def switch_of(run: Run) -> int:
    return int(run.cfg.trainable_args.get("switch_step", 200))


def lr_before_after(run: Run) -> tuple[float, float]:
    """Geometric mean lr of the final best model's schedule before and after the shift."""
    sched, switch = best_schedule(run), switch_of(run)
    return mean_log(sched, "lr", 0, switch), mean_log(sched, "lr", switch, run.cfg.stop.steps or 2 * switch)


def rewinds(run: Run) -> int:
    """Exploits that handed a member a checkpoint from before the step it had reported."""
    return sum(1 for r in run.recs if r.action is Action.EXPLOIT and (r.parent_step or 0) < r.step)


def rewinds_past_the_shift(run: Run) -> int:
    """...of those, the ones that took a member back from after the shift to before it."""
    s = switch_of(run)
    return sum(1 for r in run.recs if r.action is Action.EXPLOIT and r.step >= s > (r.parent_step or 0))


def idle(run: Run) -> float:
    """The workers' idle share from launch to the last event (``pbt stats``'s worker_idle_fraction)."""
    value = run.stats.get("worker_idle_fraction")
    return math.nan if value is None else value


def rising_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, "rising")
    rows = []
    for arm, rs in arms.items():
        losses = [final_best(r) for r in rs]
        before, after = zip(*(lr_before_after(r) for r in rs), strict=True)
        rows.append([arm, fmt_spread(losses), f"{max(losses):.4g}", " ".join(f"{x:.3g}" for x in losses),
                     fmt_spread(before, 3), fmt_spread(after, 3), f"{sum(rewinds_past_the_shift(r) for r in rs) / len(rs):.1f}",
                     f"{sum(sum(1 for x in r.recs if x.action is Action.EXPLOIT) for r in rs) / len(rs):.1f}",
                     fmt_spread([r.wall_s for r in rs], 3), fmt_spread([idle(r) for r in rs], 2),
                     fmt_spread([compute_steps(r) for r in rs], 5),
                     "all" if not sum(r.replay_mismatches for r in rs) else "mismatches"])
    text = table(["arm", "final loss: median [IQR]", "worst seed", "per seed", "lr before the shift", "lr after",
                  "exploits rewinding past the shift, per run", "exploits per run", "wall s", "worker idle",
                  "steps trained", "decisions replayed"], rows)
    text += ("\n\n(lr columns: the step-weighted geometric mean lr of the final best model's schedule; the best "
             "lr rises 10x at the shift. A rewind past the shift: an exploit made at or after it that handed over "
             "a checkpoint from before it.)")
    if FIXED in arms:
        text += "\n\n" + paired_table(arms)
    return text, rising_targets(arms)


def paired_table(arms: dict[str, list[Run]]) -> str:
    """Each PBT arm against the fixed population on the same seed: wins, the ratio of final losses
    (geometric mean over seeds, with a seeded bootstrap 95% interval), and the worst seeds."""
    rows = []
    fixed_worst = max(final_best(r) for r in arms[FIXED])
    for arm, rs in arms.items():
        if arm == FIXED:
            continue
        ratios = log_ratios(rs, arms[FIXED])
        lo, hi = bootstrap_ci(ratios)
        mean = sum(ratios) / len(ratios) if ratios else math.nan
        worst = max(final_best(r) for r in rs)
        rows.append([arm, f"{sum(x < 0 for x in ratios)}/{len(ratios)}", f"{math.exp(mean):.3g}",
                     f"[{math.exp(lo):.3g}, {math.exp(hi):.3g}]", f"{worst:.4g} vs {fixed_worst:.4g}",
                     "yes" if hi < 0 else "no" if lo > 0 else "not resolved"])
    return table(["arm", "seeds it beats the fixed population", "final loss / fixed's (geo. mean)",
                  "95% bootstrap interval", "worst seed vs fixed's worst", "better (interval below 1)"], rows)


def rising_targets(arms: dict[str, list[Run]]) -> list[str]:
    if STEP not in arms or FIXED not in arms:
        return []
    worst = {a: max(final_best(r) for r in rs) for a, rs in arms.items()}
    med = {a: spread([final_best(r) for r in rs])[0] for a, rs in arms.items()}
    out = [verdict(worst[STEP] <= worst[FIXED], f"rising: compare = step's worst seed, final loss {worst[STEP]:.4g}, "
                    f"is no worse than the fixed population's worst, {worst[FIXED]:.4g}")]
    rises = [a / b for b, a in (lr_before_after(r) for r in arms[STEP])]
    out.append(verdict(spread(rises)[0] >= 3.0, f"rising: compare = step's schedules show the rise: the lr rises "
                        f"{spread(rises)[0]:.1f}x (median over seeds) across the shift (the optimum rises 10x)"))
    if LATEST in arms:
        out.append(f"- (info) rising: medians {med[STEP]:.4g} (step), {med[LATEST]:.4g} (latest), "
                   f"{med[FIXED]:.4g} (fixed); worst seeds {worst[STEP]:.4g}, {worst[LATEST]:.4g}, {worst[FIXED]:.4g}")
    if SYNCH in arms:
        idles = {a: spread([idle(r) for r in rs])[0] for a, rs in arms.items()}
        out.append(f"- (info) rising, synch vs asynchronous: median final loss {med[SYNCH]:.4g} vs {med[STEP]:.4g}, "
                   f"worst seed {worst[SYNCH]:.4g} vs {worst[STEP]:.4g}; workers idle {idles[SYNCH]:.1%} vs "
                   f"{idles[STEP]:.1%}; wall {spread([r.wall_s for r in arms[SYNCH]])[0]:.1f} s vs "
                   f"{spread([r.wall_s for r in arms[STEP]])[0]:.1f} s")
    return out


def rising_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    """Best loss per step (median and worst seed), and the lr schedules each PBT arm found."""
    ax1, *sched_axes = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    some = next(iter(arms.values()))[0]
    switch, stop = switch_of(some), some.cfg.stop.steps or 2 * switch_of(some)
    for arm, rs in arms.items():
        steps = sorted({s for r in rs for s in curve(r)})
        rows = [[curve(r).get(s, math.nan) for s in steps] for r in rs]
        med = [spread([row[i] for row in rows])[0] for i in range(len(steps))]
        worst = [max((row[i] for row in rows if not math.isnan(row[i])), default=math.nan) for i in range(len(steps))]
        ax1.plot(steps, med, color=COLORS.get(arm), lw=2, label=f"{arm}: median (n={len(rs)})")
        ax1.plot(steps, worst, color=COLORS.get(arm), lw=1, ls=":", label=f"{arm}: worst seed")
    ax1.set(yscale="log", xlabel="step", ylabel="best loss (lower is better)", title="Rising lr: best member per step")
    ax1.axvline(switch, color="k", ls=":", lw=1)
    ax1.legend(fontsize=7, loc="upper right")
    for ax, arm in zip(sched_axes, (STEP, LATEST), strict=True):
        for r in arms.get(arm, []):
            sched = best_schedule(r)
            ax.plot([x for s in sched for x in (s["from_step"], s["to_step"])],
                    [s["hparams"]["lr"] for s in sched for _ in (0, 1)], color=COLORS[arm], alpha=0.6, lw=1.2)
        ax.axvline(switch, color="k", ls=":", lw=1)
        ax.set(yscale="log", xlabel="step", ylabel="learning rate", xlim=(0, stop),
               title=f"lr of the final best model: {arm.split(', ')[1]}")
