"""Plug-in rules for the tests (exploit.rule / explore.rule = "tests.plugin_rules:NAME"): the documented
forms, a function and an ABC subclass, and broken ones."""

from __future__ import annotations

import random
from typing import Any

from pbt_mq.rules.base import ExploreContext, ExploreRule, fmt


def copy_the_best(snapshot: list[tuple[str, float]], member: str, score: float, rng: random.Random) -> str | None:
    """A member below the board's best copies the best with probability 1/2 (one draw, from rng)."""
    if not snapshot or snapshot[0][0] == member:
        return None
    best, top = snapshot[0]
    if score == score and score >= top:
        return None
    return best if rng.random() < 0.5 else None


class HalveOrDouble(ExploreRule):
    """Each value times 0.5 or 2 (a fair draw each), clamped to its space."""

    name = "halve-or-double"

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        new, ops = dict(hparams), []
        for name in sorted(ctx.spaces):
            factor = rng.choice([0.5, 2.0])
            new[name] = ctx.spaces[name].clamp(hparams[name] * factor)
            ops.append(f"{name}: {fmt(hparams[name])} --(x{factor})--> {fmt(new[name])}")
        return new, ops


def raises(snapshot: list[tuple[str, float]], member: str, score: float, rng: random.Random) -> str | None:
    raise RuntimeError("a bug in the plug-in")


def nobody(snapshot: list[tuple[str, float]], member: str, score: float, rng: random.Random) -> str | None:
    return "m999"


def outside(hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
    return {name: 1e9 for name in ctx.spaces}, []


class WantsHistory(HalveOrDouble):
    """Reads more lineage records than an experiment may keep in Redis."""

    def history_size(self, population: int) -> int:
        return 10_000
