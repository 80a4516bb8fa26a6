"""``pbt study``'s "pareto" task: two objectives at odds, digits accuracy against model size
(``workers/pareto.toml``: an MLP with a proximal L1 penalty; ``density``, the fraction of first-layer
weights not zero, is the size). Multi-objective PBT (metric = [accuracy, density]: members ordered by
non-dominated rank, then crowding distance) against single-objective PBT on the weighted sum
``accuracy - 0.5 * density`` (the usual answer, "use a weighted sum") and random search, at equal compute.

Compared by the hypervolume of each run's final population (every member's values after its last
segment, read from the events stream): the area it dominates, with accuracy up and density down. The
reference point is the worst value seen per objective over every run of the task (the lowest accuracy,
the highest density), so all arms are measured against the same point; a run whose members all collapse
to one trade-off scores less than one that spans it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pbt_mq.core.keys import Keys
from pbt_mq.core.protocol import ProtocolError, ReadyEvent
from pbt_mq.rules.pareto import front, hypervolume
from pbt_mq.tools.study.analysis import Arm, Run, by_arm, spread
from pbt_mq.tools.study.tables import fmt_spread, table, verdict
from pbt_mq.tools.study.tasks import EXAMPLES, Fleet, Scale, run_experiment, warm_up

MO, WEIGHTED, RANDOM = "MO-PBT", "PBT, weighted sum", "random search"
ARMS = (
    Arm(MO),
    Arm(WEIGHTED, ('metric="weighted"', 'mode="max"')),
    Arm(RANDOM, ("exploit.rule=none", "explore.rule=none")),
)
COLORS = {MO: "tab:blue", WEIGHTED: "tab:orange", RANDOM: "tab:gray"}
OBJECTIVES = (("accuracy", "max"), ("density", "min"))


def pareto_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "pareto.toml"
    warm_up(fleet, file, scale.pareto)
    runs = []
    for seed in range(scale.seeds):
        for arm in ARMS if seed % 2 == 0 else ARMS[::-1]:
            run = run_experiment(fleet, "pareto", arm.label, file, [*scale.pareto, *arm.sets], seed)
            run.stats["final_points"] = final_points(fleet.r, run.exp)
            runs.append(run)
    return runs


def final_points(r: Any, exp: str) -> list[list[float]]:
    """Every member's (accuracy, density) after its last segment, from the events stream."""
    last: dict[str, dict[str, float]] = {}
    for _, fields in r.xrange(Keys(exp).events):
        try:
            ev = ReadyEvent.decode(fields.get(b"msg"))
        except ProtocolError:
            continue  # a failed segment's event: no values
        last[ev.member] = ev.metrics
    return [[m[name] for name, _ in OBJECTIVES] for m in last.values() if all(n in m for n, _ in OBJECTIVES)]


def oriented(p: Sequence[float]) -> tuple[float, ...]:
    return tuple(v if mode == "max" else -v for v, (_, mode) in zip(p, OBJECTIVES, strict=True))


def reference(runs: Sequence[Run]) -> tuple[float, ...]:
    """The worst value seen per objective over every run (oriented: the minimum of each)."""
    pts = [oriented(p) for r in runs for p in r.stats.get("final_points", [])]
    return tuple(min(p[i] for p in pts) for i in range(len(OBJECTIVES))) if pts else (0.0, 0.0)


def run_hv(run: Run, ref: Sequence[float]) -> float:
    return hypervolume([oriented(p) for p in run.stats.get("final_points", [])], ref)


def front_size(run: Run) -> int:
    pts = {str(i): oriented(p) for i, p in enumerate(run.stats.get("final_points", []))}
    return len(front(pts))


def pareto_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, "pareto")
    ref = reference([r for rs in arms.values() for r in rs])
    rows = []
    for arm, rs in arms.items():
        hvs = [run_hv(r, ref) for r in rs]
        pts = [p for r in rs for p in r.stats.get("final_points", [])]
        rows.append([arm, fmt_spread(hvs), " ".join(f"{h:.4g}" for h in hvs),
                     fmt_spread([front_size(r) for r in rs], 2),
                     f"{max((p[0] for p in pts), default=math.nan):.4f}", f"{min((p[1] for p in pts), default=math.nan):.3f}",
                     fmt_spread([r.wall_s for r in rs], 3),
                     "all" if not sum(r.replay_mismatches for r in rs) else "mismatches"])
    text = table(["arm", "hypervolume: median [IQR]", "per seed", "front size", "best accuracy seen",
                  "lowest density seen", "wall s", "decisions replayed"], rows)
    text += (f"\n\n(Hypervolume of each run's final population in (accuracy up, density down), against the "
             f"reference point of the worst values seen over every run: accuracy {ref[0]:.4f}, density {-ref[1]:.3f}.)")
    return text, pareto_targets(arms, ref)


def pareto_targets(arms: dict[str, list[Run]], ref: Sequence[float]) -> list[str]:
    if MO not in arms or RANDOM not in arms:
        return []
    med = {a: spread([run_hv(r, ref) for r in rs])[0] for a, rs in arms.items()}
    out = [verdict(med[MO] >= med[RANDOM], f"pareto: MO-PBT's median hypervolume {med[MO]:.4g} is at least random "
                                           f"search's {med[RANDOM]:.4g}")]
    if WEIGHTED in med:
        out.append(f"- (info) pareto: PBT on the weighted sum, median hypervolume {med[WEIGHTED]:.4g} (its members "
                   f"converge on one trade-off: median front size {spread([front_size(r) for r in arms[WEIGHTED]])[0]:.0f})")
    return out


def pareto_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    """Every run's final population per arm (accuracy against density), its front joined up."""
    axes = fig.subplots(1, len(arms), sharey=True, sharex=True)
    for ax, (arm, rs) in zip(axes if len(arms) > 1 else [axes], arms.items(), strict=True):
        for r in rs:
            pts = r.stats.get("final_points", [])
            ax.scatter([p[1] for p in pts], [p[0] for p in pts], color=COLORS.get(arm), alpha=0.5, s=18)
            on = front({str(i): oriented(p) for i, p in enumerate(pts)})
            f = sorted((pts[int(i)][1], pts[int(i)][0]) for i in on)
            ax.plot([x for x, _ in f], [y for _, y in f], color=COLORS.get(arm), lw=1, alpha=0.7)
        ax.set(title=f"{arm} (n={len(rs)})", xlabel="density (fraction of first-layer weights kept)")
        ax.grid(alpha=0.3)
    (axes[0] if len(arms) > 1 else axes).set_ylabel("validation accuracy")
