"""``pbt study``'s "deceptive" task: a schedule whose greedy choice pays at once and costs later, with a
known optimum (workers/deceptive.toml: SGD on the noisy quadratic model, workers/deceptive.py).

PBT is greedy (Chebykin et al., TMLR 2025, "To be greedy, or not to be"): at every ready point it
copies whatever scores best right then. On this task a smaller learning rate always scores better at
the next ready point (the noise floor falls) and worse at the end (the flat directions stall). The
expected dynamics are deterministic, so three schedules on the ready grid (one lr per segment,
within the prior) are computed here, offline, in well under a second:

- the optimum: coordinate descent, one segment at a time (a log grid, then golden section in log lr),
  forward and backward sweeps from several starts until no sweep improves;
- greedy: each segment's lr minimizes the loss at that segment's end, given the state it starts from;
- the best constant lr.

A run's regret is its final best loss minus the optimum's final loss (in loss units; lower is better,
0 is the optimal schedule; no grid-aligned schedule within the prior can go below 0). Arms: vanilla
PBT, random search at equal compute (the same initial population, exploit and explore off), PB2, and
the options that make PBT less greedy (a window of scores, a t-test, sub-populations exploited at
different periods, crossover).
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pbt_mq.core.model import Action
from pbt_mq.tools.study.analysis import (
    Arm,
    Run,
    best_schedule,
    bootstrap_ci,
    by_arm,
    curve,
    final_best,
    mean_log,
    spread,
)
from pbt_mq.tools.study.nqm import NQM
from pbt_mq.tools.study.tables import fmt_spread, table, verdict
from pbt_mq.tools.study.tasks import EXAMPLES, Fleet, Scale, best_metrics, run_experiment, warm_up

STUDY = "deceptive"
FILE = EXAMPLES / "deceptive.toml"
VANILLA, RANDOM = "PBT (vanilla)", "random search"
SYNCH, SUBPOP_SYNCH = "PBT, synch", "PBT, subpopulations, synch"
ARMS = (
    Arm(VANILLA, ("exploit.rule=truncation", "explore.rule=perturb")),
    Arm(RANDOM, ("exploit.rule=none", "explore.rule=none")),
    Arm("PB2", ("explore.rule=pb2",)),
    Arm("PBT, window 4", ("exploit.window=4",)),
    Arm("PBT, ttest", ("exploit.rule=ttest", "exploit.window=4")),
    Arm("PBT, subpopulations", ("exploit.subpopulations=[1, 4, 0]",)),
    Arm("PBT, crossover", ("explore.rule=crossover",)),
    Arm(SYNCH, ("exploit.synch=true",)),  # every ready point decided once all members reported it
    Arm(SUBPOP_SYNCH, ("exploit.subpopulations=[1, 4, 0]", "exploit.synch=true")),
)
QUICK_ARMS = ARMS  # --quick, CI's smoke test: every arm, on a smaller task
QUICK_SETS = ("population.size=4", "stop.steps=200")
COLORS = {VANILLA: "tab:blue", RANDOM: "tab:gray", "PB2": "tab:purple", "PBT, window 4": "tab:orange",
          "PBT, ttest": "tab:red", "PBT, subpopulations": "tab:green", "PBT, crossover": "tab:brown",
          SYNCH: "tab:cyan", SUBPOP_SYNCH: "tab:olive"}


def deceptive_study(fleet: Fleet, scale: Scale) -> list[Run]:
    sets = QUICK_SETS if scale.quick else ()
    arms = scale.pick(QUICK_ARMS if scale.quick else ARMS, (VANILLA, RANDOM))  # read per call (a caller may narrow them)
    warm_up(fleet, FILE, sets)
    runs = []
    for seed in range(scale.seeds):
        for arm in arms if seed % 2 == 0 else arms[::-1]:  # alternate, so drift in load evens out
            run = run_experiment(fleet, STUDY, arm.label, FILE, [*sets, *arm.sets], seed)
            run.stats["best_metrics"] = best_metrics(fleet.r, run)  # true_loss: the exact loss, never noisy
            runs.append(run)
    return runs


# ---------------------------------------------------------------- the known optimum (pure, offline)


@dataclass(frozen=True)
class Schedules:
    """The optimal, greedy and best constant lr schedules of one problem on one ready grid."""

    nqm: NQM
    segment: int  # steps per segment (ready.steps)
    optimal: tuple[float, ...]
    greedy: tuple[float, ...]
    constant: float

    def losses(self, sched: Sequence[float]) -> list[float]:
        """The expected loss at the end of every segment."""
        m, out = list(self.nqm.start), []
        for lr in sched:
            m = self.nqm.advance(m, lr, self.segment)
            out.append(self.nqm.loss(m))
        return out

    def final(self, sched: Sequence[float]) -> float:
        return self.losses(sched)[-1]

    def curve(self, sched: Sequence[float]) -> dict[int, float]:
        return {self.segment * (i + 1): v for i, v in enumerate(self.losses(sched))}

    @property
    def constants(self) -> tuple[float, ...]:
        return (self.constant,) * len(self.optimal)

    @property
    def finals(self) -> dict[str, float]:
        return {"optimal": self.final(self.optimal), "best constant": self.final(self.constants),
                "greedy": self.final(self.greedy)}


def minimize_log(f: Callable[[float], float], lo: float, hi: float, grid: int = 33, tol: float = 1e-7) -> float:
    """argmin of f over [lo, hi], searched in log: a log grid, then golden section around its best point."""
    a, b = math.log(lo), math.log(hi)
    xs = [a + (b - a) * i / (grid - 1) for i in range(grid)]
    vals = [_finite(f(math.exp(x))) for x in xs]
    i = min(range(grid), key=vals.__getitem__)
    left, right = xs[max(0, i - 1)], xs[min(grid - 1, i + 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = right - g * (right - left), left + g * (right - left)
    fc, fd = _finite(f(math.exp(c))), _finite(f(math.exp(d)))
    while right - left > tol:
        if fc < fd:
            right, d, fd = d, c, fc
            c = right - g * (right - left)
            fc = _finite(f(math.exp(c)))
        else:
            left, c, fc = c, d, fd
            d = left + g * (right - left)
            fd = _finite(f(math.exp(d)))
    best = min(((vals[i], xs[i]), (fc, c), (fd, d)))  # never worse than the grid's best
    return math.exp(best[1])


def _finite(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def greedy_schedule(nqm: NQM, n: int, k: int, lo: float, hi: float) -> tuple[float, ...]:
    """Each segment's lr minimizes the loss at that segment's end, from the state the earlier ones left."""
    m, out = list(nqm.start), []
    for _ in range(n):
        lr = minimize_log(lambda x, m=m: nqm.loss(nqm.advance(m, x, k)), lo, hi)
        m = nqm.advance(m, lr, k)
        out.append(lr)
    return tuple(out)


def best_constant(nqm: NQM, n: int, k: int, lo: float, hi: float) -> float:
    def final(lr: float) -> float:
        m = nqm.advance(list(nqm.start), lr, k * n)  # one affine map: k * n steps at one lr
        return nqm.loss(m)

    return minimize_log(final, lo, hi)


def coordinate_descent(nqm: NQM, start: Sequence[float], k: int, lo: float, hi: float,
                       max_sweeps: int = 500) -> tuple[float, ...]:
    """One segment at a time, the rest held: the final loss is affine in the state after segment j
    (the later segments' maps composed), so each 1-D search costs O(dim) per evaluation."""
    sched, n = list(start), len(start)
    last = math.inf
    for sweep in range(max_sweeps):
        order = range(n) if sweep % 2 == 0 else range(n - 1, -1, -1)
        for j in order:
            m = list(nqm.start)
            for lr in sched[:j]:
                m = nqm.advance(m, lr, k)
            P, Q = [1.0] * len(m), [0.0] * len(m)  # the map of segments j+1 .. n-1: m -> P m + Q
            for lr in reversed(sched[j + 1:]):
                p, q = nqm.affine(lr, k)
                P, Q = [Pi * pi for Pi, pi in zip(P, p, strict=True)], [Pi * qi + Qi for Pi, qi, Qi in zip(P, q, Q, strict=True)]
            w = [0.5 * h * Pi for h, Pi in zip(nqm.curvature, P, strict=True)]

            def final(lr: float, m: list[float] = m, w: list[float] = w) -> float:
                return sum(wi * xi for wi, xi in zip(w, nqm.advance(m, lr, k), strict=True))

            sched[j] = minimize_log(final, lo, hi)
        now = _final(nqm, sched, k)
        if now >= last * (1 - 1e-12):
            break
        last = now
    return tuple(sched)


def _final(nqm: NQM, sched: Sequence[float], k: int) -> float:
    m = list(nqm.start)
    for lr in sched:
        m = nqm.advance(m, lr, k)
    return nqm.loss(m)


def solve(nqm: NQM, n: int, k: int, lo: float, hi: float) -> Schedules:
    """The optimal (best of several coordinate-descent starts), greedy and best constant schedules."""
    greedy, constant = greedy_schedule(nqm, n, k, lo, hi), best_constant(nqm, n, k, lo, hi)
    starts = (greedy, (constant,) * n, (hi,) * n, tuple(hi if i < n // 2 else lo for i in range(n)))
    optimal = min((coordinate_descent(nqm, s, k, lo, hi) for s in starts), key=lambda s: _final(nqm, s, k))
    return Schedules(nqm, k, optimal, greedy, constant)


@functools.lru_cache(maxsize=16)
def _solve_cached(key: str) -> Schedules:
    d = json.loads(key)
    return solve(NQM.make(**d["nqm"]), d["n"], d["k"], d["lo"], d["hi"])


def schedules_for(run: Run) -> Schedules:
    """The known optimum of the problem and ready grid ``run`` was trained on (cached per configuration)."""
    cfg = run.cfg
    args = {k: cfg.trainable_args[k] for k in ("dim", "cond", "sigma2", "power") if k in cfg.trainable_args}
    k = cfg.ready.steps or 1
    n = (cfg.stop.steps or k) // k
    space = cfg.spaces["lr"]
    return _solve_cached(json.dumps({"nqm": args, "n": n, "k": k, "lo": space.low, "hi": space.high}, sort_keys=True))


# ---------------------------------------------------------------- the report


def true_final(run: Run) -> float:
    """The exact final loss of the final best model (``true_loss``: the selected score may carry noise)."""
    return float(run.stats.get("best_metrics", {}).get("true_loss", final_best(run)))


def regret(run: Run) -> float:
    return true_final(run) - schedules_for(run).finals["optimal"]


def paired(rs: Sequence[Run], base: Sequence[Run]) -> list[float]:
    """Per seed: the arm's final loss minus the baseline's on the same seed (negative: the arm did better)."""
    by_seed = {r.seed: true_final(r) for r in base}
    return [true_final(r) - by_seed[r.seed] for r in rs if r.seed in by_seed]


def grid_decay_step(sched: Sequence[float], k: int, below: float) -> float:
    return next((float(i * k) for i, lr in enumerate(sched) if lr < below), math.inf)


def deceptive_section(runs: Sequence[Run]) -> tuple[str, list[str]]:
    arms = by_arm(runs, STUDY)
    if not arms:
        return "", []
    some = next(iter(arms.values()))[0]
    sol, space = schedules_for(some), some.cfg.spaces["lr"]
    mid = math.sqrt(space.low * space.high)  # "decayed": below the prior's geometric middle
    stop = some.cfg.stop.steps or sol.segment * len(sol.optimal)
    finals = sol.finals
    rows = []
    for arm, rs in arms.items():
        losses, regrets = [true_final(r) for r in rs], [regret(r) for r in rs]
        diff = paired(rs, arms.get(RANDOM, []))
        lo_ci, hi_ci = bootstrap_ci(diff)
        vs_rs = ("-" if arm == RANDOM or not diff else
                 f"{sum(diff) / len(diff):+.4g} [{lo_ci:+.4g}, {hi_ci:+.4g}]")
        scheds = [best_schedule(r) for r in rs]
        rows.append([arm, fmt_spread(losses), f"{max(losses):.4g}", " ".join(f"{x:.4g}" for x in losses),
                     f"{spread(regrets)[0]:.4g}", f"{max(regrets):.4g}", vs_rs,
                     fmt_spread([mean_log(s, "lr", 0, stop // 2) for s in scheds], 3),
                     fmt_spread([mean_log(s, "lr", stop - sol.segment, stop) for s in scheds], 3),
                     f"{sum(sum(1 for x in r.recs if x.action is Action.EXPLOIT) for r in rs) / len(rs):.1f}",
                     fmt_spread([r.wall_s for r in rs], 3),
                     "all" if not sum(r.replay_mismatches for r in rs) else "mismatches"])
    text = table(["arm", "final loss: median [IQR]", "worst seed", "per seed", "regret: median", "regret: worst",
                  "vs random search, same seed: mean [95% bootstrap]", "lr, first half", "lr, last segment",
                  "exploits/run", "wall s", "decisions replayed"], rows)
    opt, greedy = sol.optimal, sol.greedy
    text += (f"\n\nThe known optimum on this grid ({len(opt)} segments of {sol.segment} steps, lr within the prior): "
             f"optimal schedule final loss **{finals['optimal']:.4g}**, best constant lr ({sol.constant:.3g}) "
             f"{finals['best constant']:.4g}, greedy {finals['greedy']:.4g}. The optimum holds lr "
             f"{opt[0]:.3g} until step {grid_decay_step(opt, sol.segment, mid):.0f}, then decays to {opt[-1]:.3g}; "
             f"greedy starts at {greedy[0]:.3g}, is below {mid:.3g} from step "
             f"{grid_decay_step(greedy, sol.segment, mid):.0f} and ends at {greedy[-1]:.3g}.\n\n"
             "(Loss: the exact expected loss of the final best model (`true_loss`). Regret: that minus the optimal "
             "schedule's final loss; 0 is the optimum, nothing on the grid goes below it. vs random search: the "
             "arm's final loss minus random search's on the same seed, negative is better. lr columns: the "
             "step-weighted geometric mean lr of the final best model's schedule.)")
    return text, deceptive_targets(arms, sol)


def report_deceptive(runs: Sequence[Run]) -> str:
    """The task's markdown section: the table, the known optimum, and the verdict lines."""
    text, verdicts = deceptive_section(runs)
    return text + ("\n\n" + "\n".join(verdicts) if verdicts else "")


def deceptive_targets(arms: dict[str, list[Run]], sol: Schedules) -> list[str]:
    f = sol.finals
    greedy, constant = f["greedy"] - f["optimal"], f["best constant"] - f["optimal"]
    out = [verdict(greedy >= 2 * constant > 0,
                   f"deceptive: the task is deceptive: the greedy schedule's regret {greedy:.4g} is >= 2x the best "
                   f"constant lr's {constant:.4g} (final losses: greedy {f['greedy']:.4g}, best constant "
                   f"{f['best constant']:.4g}, optimal {f['optimal']:.4g})")]
    med = {a: spread([regret(r) for r in rs])[0] for a, rs in arms.items()}
    if VANILLA in med and RANDOM in med:
        out.append(f"- (info) deceptive: median regret, vanilla PBT {med[VANILLA]:.4g} vs random search "
                   f"{med[RANDOM]:.4g} (greedy schedule's {f['greedy'] - f['optimal']:.4g}, best constant's "
                   f"{f['best constant'] - f['optimal']:.4g})")
    if VANILLA in med:
        better = [a for a in med if a not in (VANILLA, RANDOM) and med[a] < med[VANILLA]]
        out.append(f"- (info) deceptive: arms with a lower median regret than vanilla PBT: "
                   f"{', '.join(f'{a} ({med[a]:.4g})' for a in better) or 'none'}")
        halves = {a: halving(rs, arms[VANILLA]) for a, rs in arms.items() if a not in (VANILLA, RANDOM, SYNCH)}
        halves = {a: h for a, h in halves.items() if not math.isnan(h[0])}  # (no pairs, or vanilla at the optimum)
        if halves:  # the best arm by its mean, then its own paired interval: read it as the best case
            best = min(halves, key=lambda a: halves[a][0])
            ratio, lo, hi, wins, n = halves[best]
            out.append(verdict(hi <= 0.5, f"deceptive: a non-greedy option ends with at most half of vanilla PBT's "
                                          f"regret: best {best}, mean regret {ratio:.3g}x vanilla's [{lo:.3g}, {hi:.3g}] "
                                          f"(bootstrap 95%, paired by seed), at most half in {wins}/{n} seeds"))
    if SYNCH in arms and SUBPOP_SYNCH in arms:  # synchronous rounds: the greedy race the simulator predicts
        ratio, lo, hi, wins, n = halving(arms[SUBPOP_SYNCH], arms[SYNCH])
        out.append(f"- (info) deceptive: with exploit.synch, sub-populations end at {ratio:.3g}x synchronous PBT's "
                   f"regret [{lo:.3g}, {hi:.3g}] (paired by seed), at most half in {wins}/{n} seeds")
    return out


def halving(runs: Sequence[Run], vanilla: Sequence[Run]) -> tuple[float, float, float, int, int]:
    """An arm's mean regret over vanilla PBT's on the same seeds, its seeded bootstrap 95% interval (a
    ratio of means, resampling seeds in pairs), and in how many seeds its regret is at most half vanilla's."""
    base = {r.seed: regret(r) for r in vanilla}
    pairs = [(regret(r), base[r.seed]) for r in runs if r.seed in base]
    if not pairs or sum(v for _, v in pairs) <= 0:
        return math.nan, math.nan, math.nan, 0, len(pairs)
    rng = random.Random(23)
    ratios = []
    for _ in range(2000):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        den = sum(v for _, v in pick)
        ratios.append(sum(a for a, _ in pick) / den if den > 0 else math.inf)
    ratios.sort()
    mean = sum(a for a, _ in pairs) / sum(v for _, v in pairs)
    return mean, ratios[50], ratios[1949], sum(1 for a, v in pairs if a <= v / 2), len(pairs)


def deceptive_figure(fig: Any, arms: dict[str, list[Run]]) -> None:
    """Best loss per step (median over seeds) with the known schedules' curves; the lr schedules."""
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.4, 1])
    some = next(iter(arms.values()))[0]
    sol = schedules_for(some)
    for arm, rs in arms.items():
        steps = sorted({s for r in rs for s in curve(r)})
        rows = [[curve(r).get(s, math.nan) for s in steps] for r in rs]
        med = [spread([row[i] for row in rows])[0] for i in range(len(steps))]
        ax1.plot(steps, med, color=COLORS.get(arm), lw=2, ls="--" if arm == RANDOM else "-",
                 label=f"{arm} (n={len(rs)})")
    for name, sched, ls in (("optimal", sol.optimal, "-"), ("greedy", sol.greedy, ":"),
                            ("best constant", sol.constants, "-.")):
        c = sol.curve(sched)
        ax1.plot(list(c), list(c.values()), color="k", lw=1.2, ls=ls, label=f"{name} schedule (exact)")
        xs = [x for i in range(len(sched)) for x in (i * sol.segment, (i + 1) * sol.segment)]
        ax2.plot(xs, [lr for lr in sched for _ in (0, 1)], color="k", lw=1.2, ls=ls, label=name)
    ax1.set(yscale="log", xlabel="step", ylabel="best loss (lower is better)",
            title="Deceptive schedule: best member per step (median over seeds)")
    ax1.legend(fontsize=7, loc="upper right")
    for r in arms.get(VANILLA, []):
        sched = best_schedule(r)
        ax2.plot([x for s in sched for x in (s["from_step"], s["to_step"])],
                 [s["hparams"]["lr"] for s in sched for _ in (0, 1)], color=COLORS[VANILLA], alpha=0.6, lw=1.2)
    space = some.cfg.spaces["lr"]
    ax2.set(yscale="log", xlabel="step", ylabel="learning rate", ylim=(space.low / 1.3, space.high * 1.3),
            title="lr: vanilla PBT's final best model per seed (blue)")
    ax2.legend(fontsize=7, loc="lower left")
