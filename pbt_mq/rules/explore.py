"""The built-in explore rules: perturb (x0.8/x1.2, or Gaussian noise), resample from the prior, none.

Each tuned hyperparameter is mutated independently, in sorted order, from the decision's rng;
the ops read like ``lr: 0.01 --(x0.8)--> 0.008`` so a lineage log explains itself.
"""

from __future__ import annotations

import random
from typing import Any

from pbt_mq.rules.base import ExploreContext, ExploreRule, fmt


class Perturb(ExploreRule):
    """Perturb each value (``explore.perturb``), or with ``resample_probability`` resample it."""

    name = "perturb"

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        new = dict(hparams)
        ops: list[str] = []
        for name in sorted(ctx.spaces):
            space = ctx.spaces[name]
            old = hparams.get(name)
            if old is None or not space.contains(old):
                value, how = space.sample(rng), "resample"
            elif self.always_resample or rng.random() < self.spec.resample_probability:
                value, how = space.sample(rng), "resample"
            else:
                value, how = space.perturb(old, rng, self.spec.perturb)
            new[name] = value
            ops.append(f"{name}: {fmt(old)} --({how})--> {fmt(value)}")
        return new, ops

    always_resample = False


class Resample(Perturb):
    """Draw every value afresh from its prior."""

    name = "resample"
    always_resample = True


class NoExplore(ExploreRule):
    """Keep the donor's values (exploit-only ablations). Takes no draw."""

    name = "none"

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        return dict(hparams), []
