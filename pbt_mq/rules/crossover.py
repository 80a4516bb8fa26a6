"""Crossover explore: the child of two good parents, then perturbed (the PBT paper's "future work").

A member that exploits copies the donor's weights; perturb then moves only the donor's values, so
what the rest of the population learnt about good hyperparameters is ignored. Crossover takes a
second parent from the population's recent good records and mixes the two per hyperparameter:
a categorical or integer value comes from either parent with probability 1/2, a float is drawn
uniformly between the parents' values in the space's own scale (log-uniform for log spaces: a
blend crossover), and the result is then perturbed exactly as ``explore.perturb`` does.

Second parent: the newest record of each other member in the newest ``history_size`` lineage
records (``ctx.history``); dropped if its score is not finite (it diverged), if its values do not
fit the spaces (another shape), or if they equal the donor's (the donor itself, or a copy of it:
crossing with it is plain perturb). The rest are ranked by ``ctx.higher_is_better(score)`` and the
parent is drawn uniformly from the top quarter (at least one). None left: plain perturb.

Trade-off: scores of records a few steps apart are compared as if simultaneous (the window is a
few rounds of the population), and a blended float need not be as good as either parent; in
exchange a child can land between two good regions that perturb alone would take many rounds to
walk between. Pure and replayable like PB2: the first op names the newest record seen and how
many were read (``crossover: upto=ID count=N ...``), so ``replay_history`` finds the same window.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from pbt_mq.core.model import Action, Lineage
from pbt_mq.core.space import AnySpace, FloatSpace, Value
from pbt_mq.rules.base import ExploreContext, ExploreRule, fmt, history_seen, id_key, sort_snapshot
from pbt_mq.rules.explore import Perturb

TOP = 0.25  # the second parent is drawn from this top fraction of the candidates
PER_MEMBER = 4  # lineage records read per member: about four rounds of the population
MAX_HISTORY = 512  # at most this many (one XREVRANGE per exploit; 4 * 128 members)


def window(population: int) -> int:
    """How many of the newest lineage records the arbiter reads for one crossover."""
    return max(1, min(MAX_HISTORY, PER_MEMBER * population))


def blend(space: AnySpace, a: Value | None, b: Value, rng: random.Random) -> Value:
    """One hyperparameter of the child of ``a`` (the donor's) and ``b`` (inside ``space``).

    Floats: uniform between the two (log-uniform in a log space), clamped to [min, max] of
    the parents so rounding never leaves the interval. Ints and categoricals: either parent,
    1/2 each (an integer in between is a different architecture, not an average). A donor
    value outside the space gives ``b``. Always one draw, so the rng stays in step."""
    if a is None or not space.contains(a):
        rng.random()
        return b
    if isinstance(space, FloatSpace):
        lo, hi = sorted((float(a), float(b)))
        if space.log:
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            x = rng.uniform(lo, hi)
        return space.clamp(min(hi, max(lo, x)))
    return b if rng.random() < 0.5 else a


def candidates(hparams: dict[str, Any], ctx: ExploreContext, recs: Sequence[Lineage]) -> list[Lineage]:
    """Possible second parents, best first: each other member's newest record in ``recs`` (oldest
    first) with a finite score and values that fit the spaces and differ from the donor's."""
    latest: dict[str, Lineage] = {}
    for rec in recs:
        if rec.action in (Action.CONTINUE, Action.EXPLOIT, Action.DONE) and rec.hparams is not None:
            latest[rec.member] = rec
    names = sorted(ctx.spaces)
    usable = {
        m: rec for m, rec in latest.items()
        if m != ctx.member and math.isfinite(rec.score)
        and all(n in rec.hparams and ctx.spaces[n].contains(rec.hparams[n]) for n in names)
        and any(rec.hparams[n] != hparams.get(n) for n in names)
    }
    board = sort_snapshot([(m, ctx.higher_is_better(rec.score)) for m, rec in usable.items()])
    return [usable[m] for m, _ in board]


class Crossover(ExploreRule):
    """``explore.rule = "crossover"``: blend the donor with a good recent member, then perturb."""

    name = "crossover"

    def history_size(self, population: int) -> int:
        return window(population)

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        """The first op names the window (``upto``, ``count``) and the second parent, which with the
        rng is all a replay needs; then one op per hyperparameter, in sorted order."""
        recs = sorted(ctx.history, key=lambda rec: id_key(rec.id))
        upto = recs[-1].id if recs else "0-0"
        head = f"crossover: upto={upto} count={len(recs)}"
        ranked = candidates(hparams, ctx, recs)
        if not ranked:
            new, ops = Perturb(self.spec).explore(hparams, ctx, rng)
            return new, [f"{head} n=0 (no second parent: perturb)", *ops]
        top = max(1, math.ceil(TOP * len(ranked)))
        other = ranked[rng.randrange(top)]
        theirs = other.hparams or {}  # candidates() keeps records with every value only
        new = dict(hparams)
        ops = [f"{head} n={len(ranked)} top={top} with {other.member}@step {other.step}"]
        for name in sorted(ctx.spaces):
            space, a, b = ctx.spaces[name], hparams.get(name), theirs[name]
            crossed = blend(space, a, b, rng)
            if rng.random() < self.spec.resample_probability:
                value, how = space.sample(rng), "resample"
            else:
                value, how = space.perturb(crossed, rng, self.spec.perturb)
            new[name] = value
            ops.append(f"{name}: {fmt(a)} x {fmt(b)} --(cross {fmt(crossed)}, {how})--> {fmt(value)}")
        return new, ops

    def replay_history(self, records: Sequence[Lineage], ops: Sequence[str]) -> Sequence[Lineage]:
        """The records a logged crossover saw: the ``count`` newest up to ``upto``."""
        return history_seen(records, ops, "crossover")
