"""PB2: model-based explore (Parker-Holder et al. 2020, "Provably Efficient Online
Hyperparameter Optimization with Population-Based Bandits").

Random perturbation throws away what the population has already learnt about which
hyperparameters help *now*. PB2 fits a Gaussian process to the recent segments of the
whole population, (time, hyperparameters) -> score improvement per step, with a
time-varying kernel (old segments count less: what helps changes during training), and
picks the candidate with the highest upper confidence bound. Members still training are
added as pending points (GP-BUCB), which shrinks the bonus near them, so concurrent
proposals spread out instead of piling onto one point.

``PB2.explore`` is a pure function of (the donor's hparams, the context's spaces and lineage
history, the decision rng). The arbiter gives it the newest ``window(n)`` records and it writes
the id of the newest one into the ops (``pb2: upto=ID count=N ...``), so
``state.lineage.replay_decisions`` re-derives every proposal from the log alone. numpy only:
the ``pb2`` extra (``pip install 'pbt-mq[pb2]'``); the registry imports this module only when
an experiment selects ``explore.rule = "pb2"``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pbt_mq.core.model import Action, Lineage
from pbt_mq.core.space import AnySpace, CategoricalSpace, FloatSpace, IntSpace, PerturbSpec
from pbt_mq.rules.base import ExploreContext, ExploreRule, fmt, history_seen, id_key
from pbt_mq.rules.explore import Perturb

MIN_POINTS = 4  # fewer observed segments than this: perturb as usual (nothing to model yet)
N_GLOBAL, N_LOCAL = 192, 64  # candidates drawn from the prior / around the donor
LENGTHSCALES = (0.1, 0.2, 0.4, 0.8)  # in [0, 1]-normalised hyperparameter units
EPSILONS = (0.01, 0.1, 0.3)  # time-kernel forgetting rate per segment
NOISES = (0.05, 0.2, 0.5)  # observation noise variance, relative to the standardised signal


def window(population: int) -> int:
    """How many recent lineage records the arbiter reads: about eight rounds of the population,
    at most 128 (the GP fit is cubic in it: ~10 ms at 64 records, ~50 ms at 128 on one core)."""
    return max(64, min(128, 8 * population))


@dataclass(frozen=True)
class Point:
    """One segment: hyperparameters ``hparams`` used from step ``t``; ``y`` = improvement per step."""

    t: float
    hparams: dict[str, Any]
    y: float = 0.0


# ---------------------------------------------------------------- data from the lineage log


def segment_data(
    recs: Sequence[Lineage], higher_is_better: Callable[[float], float], exclude: str = ""
) -> tuple[list[Point], list[Point]]:
    """(observed segments, pending ones) from records sorted oldest first.

    A segment's improvement is its score minus the score of the checkpoint it started
    from (found by ``ckpt_key`` in the same window), per step, higher is better. A segment
    that ended non-finite (diverged) counts as the worst improvement seen. Pending: each
    member's newest queued segment, except ``exclude`` (the member being decided).
    """
    by_ckpt = {rec.ckpt_key: rec for rec in recs if rec.ckpt_key}
    observed: list[Point] = []
    diverged: list[Point] = []
    latest: dict[str, Lineage] = {}
    for rec in recs:
        if rec.action not in (Action.CONTINUE, Action.EXPLOIT, Action.DONE) or not rec.hparams:
            continue
        latest[rec.member] = rec
        before = by_ckpt.get(rec.start_key)
        if before is None:
            continue
        s0 = higher_is_better(before.score)
        steps = max(1, rec.step - rec.start_step)
        if not math.isfinite(s0):
            continue
        if math.isfinite(rec.score):
            observed.append(Point(float(rec.start_step), rec.hparams, (higher_is_better(rec.score) - s0) / steps))
        else:
            diverged.append(Point(float(rec.start_step), rec.hparams))
    if observed and diverged:
        worst = min(p.y for p in observed)
        observed += [Point(p.t, p.hparams, worst) for p in diverged]
    pending = [
        Point(float(rec.parent_step if rec.action is Action.EXPLOIT else rec.step), rec.next_hparams)
        for m, rec in sorted(latest.items())
        if m != exclude and rec.action in (Action.CONTINUE, Action.EXPLOIT) and rec.next_hparams
    ]
    return observed, pending


# ---------------------------------------------------------------- encoding


def encode(hparams: dict[str, Any], spaces: dict[str, AnySpace]) -> list[float]:
    """Hyperparameters as coordinates in [0, 1] (log spaces in log units); unordered
    categoricals one-hot, scaled so two different values are at distance 1."""
    out: list[float] = []
    for name in sorted(spaces):
        space, v = spaces[name], hparams[name]
        if isinstance(space, CategoricalSpace):
            i = space._index(v)
            i = 0 if i is None else i
            if space.ordered:
                out.append(i / max(1, len(space.values) - 1))
            else:
                out += [math.sqrt(0.5) if j == i else 0.0 for j in range(len(space.values))]
        else:
            out.append(_unit(space, float(v)))
    return out


def _unit(space: FloatSpace | IntSpace, v: float) -> float:
    lo, hi = float(space.low), float(space.high)
    if space.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, space.low))
    return min(1.0, max(0.0, (v - lo) / (hi - lo)))


# ---------------------------------------------------------------- the GP


@dataclass(frozen=True)
class GP:
    lengthscale: float
    epsilon: float
    noise: float

    def kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """SE kernel on hyperparameters times (1-eps)^(|dt|/2) on time (in segments)."""
        d2 = ((a[:, None, 1:] - b[None, :, 1:]) ** 2).sum(-1)
        dt = np.abs(a[:, None, 0] - b[None, :, 0])
        return np.exp(-0.5 * d2 / self.lengthscale**2) * (1.0 - self.epsilon) ** (dt / 2.0)

    def factor(self, x: np.ndarray) -> np.ndarray:
        return np.linalg.cholesky(self.kernel(x, x) + self.noise * np.eye(len(x)))

    def log_likelihood(self, x: np.ndarray, y: np.ndarray) -> float:
        try:
            chol = self.factor(x)
        except np.linalg.LinAlgError:
            return -math.inf
        alpha = np.linalg.solve(chol, y)
        return float(-0.5 * alpha @ alpha - np.log(np.diag(chol)).sum())

    def mean(self, x: np.ndarray, y: np.ndarray, q: np.ndarray) -> np.ndarray:
        chol = self.factor(x)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y))
        return self.kernel(q, x) @ alpha

    def std(self, x: np.ndarray, q: np.ndarray) -> np.ndarray:
        v = np.linalg.solve(self.factor(x), self.kernel(x, q))
        return np.sqrt(np.clip(1.0 - (v * v).sum(0), 1e-12, None))


def fit(x: np.ndarray, y: np.ndarray) -> GP:
    """The grid point of highest marginal likelihood (a grid, not an optimiser: deterministic, cheap)."""
    grid = [GP(ell, eps, nz) for ell in LENGTHSCALES for eps in EPSILONS for nz in NOISES]
    return max(grid, key=lambda gp: gp.log_likelihood(x, y))


def standardise(y: np.ndarray) -> np.ndarray:
    """Robust z-scores clipped to +-3, so one diverged or switch-crossing segment cannot flatten the rest."""
    med = float(np.median(y))
    scale = 1.4826 * float(np.median(np.abs(y - med)))
    if scale <= 0:
        scale = float(np.std(y)) or 1.0
    return np.clip((y - med) / scale, -3.0, 3.0)


def kappa(n: int) -> float:
    """The UCB exploration weight sqrt(beta_t), with Ray Tune's PB2 constants (c1=0.2, c2=0.4)."""
    return math.sqrt(0.2 + max(0.0, math.log(0.4 * max(n, 1))))


# ---------------------------------------------------------------- proposal


def candidates(base: dict[str, Any], spaces: dict[str, AnySpace], rng: random.Random) -> list[dict[str, Any]]:
    """The donor's own values first, then values near them, then draws from the prior; all in-space."""
    near = PerturbSpec(mode="noise", noise_std=0.1)
    out = [dict(base)]
    for _ in range(N_LOCAL):
        out.append({n: (spaces[n].perturb(base[n], rng, near)[0] if spaces[n].contains(base[n]) else spaces[n].sample(rng))
                    for n in sorted(spaces)})
    for _ in range(N_GLOBAL):
        out.append({n: spaces[n].sample(rng) for n in sorted(spaces)})
    return out


def propose(
    base: dict[str, Any],
    spaces: dict[str, AnySpace],
    observed: Sequence[Point],
    pending: Sequence[Point],
    t_now: float,
    rng: random.Random,
) -> tuple[dict[str, Any], dict[str, float]]:
    """GP-UCB over candidates at time ``t_now``; returns the pick and what it rested on."""
    seg = _segment_length(observed)
    x = np.array([[p.t / seg, *encode(p.hparams, spaces)] for p in observed])
    y = standardise(np.array([p.y for p in observed]))
    gp = fit(x, y)
    cands = candidates(base, spaces, rng)
    q = np.array([[t_now / seg, *encode(c, spaces)] for c in cands])
    mu = gp.mean(x, y, q)
    xp = np.vstack([x, [[p.t / seg, *encode(p.hparams, spaces)] for p in pending]]) if pending else x
    sd = gp.std(xp, q)
    k = kappa(len(observed))
    ucb = mu + k * sd
    best = int(np.argmax(ucb))  # first of equals: the donor's own values win a tie
    info = {"ell": gp.lengthscale, "eps": gp.epsilon, "noise": gp.noise, "kappa": k,
            "mu": float(mu[best]), "sd": float(sd[best])}
    out = {**base, **cands[best]}
    return out, info


def _segment_length(points: Sequence[Point]) -> float:
    """Time is measured in segments (the paper's t): the median gap between distinct start steps."""
    ts = sorted({p.t for p in points})
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False) if b > a]
    return float(np.median(gaps)) if gaps else 1.0


class PB2(ExploreRule):
    """``explore.rule = "pb2"``: GP-UCB over the population's recent segments (see the module doc)."""

    name = "pb2"

    def history_size(self, population: int) -> int:
        return window(population)

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        """Propose values for ``ctx.member`` resuming at ``ctx.donor_step``; the first op names the
        newest record seen and the window size, which is all a replay needs besides the rng."""
        recs = sorted(ctx.history, key=lambda rec: id_key(rec.id))
        upto = recs[-1].id if recs else "0-0"
        head = f"pb2: upto={upto} count={window(ctx.population)}"
        observed, pending = (
            [p for p in points if all(n in p.hparams for n in ctx.spaces)]  # records of another shape: skipped
            for points in segment_data(recs, ctx.higher_is_better, exclude=ctx.member)
        )
        if len(observed) < MIN_POINTS:
            new, ops = Perturb(self.spec).explore(hparams, ctx, rng)
            return new, [f"{head} n={len(observed)} (too few points: perturb)", *ops]
        new, info = propose(hparams, ctx.spaces, observed, pending, ctx.donor_step, rng)
        stats = " ".join(f"{k}={v:.3g}" for k, v in info.items())
        ops = [f"{n}: {fmt(hparams.get(n))} --(pb2)--> {fmt(new[n])}" for n in sorted(ctx.spaces)]
        return new, [f"{head} n={len(observed)} pending={len(pending)} {stats}", *ops]

    def replay_history(self, records: Sequence[Lineage], ops: Sequence[str]) -> Sequence[Lineage]:
        """The records a logged PB2 decision saw: the ``count`` newest up to ``upto``."""
        return history_seen(records, ops, "pb2")
