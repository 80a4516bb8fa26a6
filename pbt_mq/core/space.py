"""Hyperparameter spaces: sample from the prior, perturb, resample, clamp.

Each space knows its own kind, so a categorical is never multiplied like a float
(a classic Ray Tune complaint) and an integer stays an integer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

Value = bool | int | float | str


@dataclass(frozen=True)
class PerturbSpec:
    """How a numeric value is perturbed: by a factor, or by additive Gaussian noise."""

    factors: tuple[float, ...] = (0.8, 1.2)
    mode: str = "multiply"  # "multiply" | "noise"
    noise_std: float = 0.1  # fraction of the range (of log-range for log spaces)


@dataclass(frozen=True)
class FloatSpace:
    low: float
    high: float
    log: bool = False
    perturb_mode: str | None = None  # overrides PerturbSpec.mode for this hparam

    def sample(self, rng: random.Random) -> float:
        # exp(log(x)) and low + (high-low)*u can round just past a bound: clamp
        if self.log:
            return self.clamp(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self.clamp(rng.uniform(self.low, self.high))

    def clamp(self, value: Value) -> float:
        return min(self.high, max(self.low, float(value)))

    def contains(self, value: Value) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and self.low <= float(value) <= self.high
        )

    def perturb(self, value: Value, rng: random.Random, explore: PerturbSpec) -> tuple[float, str]:
        mode = self.perturb_mode or explore.mode
        v = float(value)
        if mode == "noise":
            if self.log:
                span = math.log(self.high) - math.log(self.low)
                d = rng.gauss(0.0, explore.noise_std * span)
                return self.clamp(math.exp(math.log(max(v, self.low)) + d)), f"x{math.exp(d):.3g}"
            d = rng.gauss(0.0, explore.noise_std * (self.high - self.low))
            return self.clamp(v + d), f"{d:+.3g}"
        factor = rng.choice(explore.factors)
        return self.clamp(v * factor), f"x{factor:g}"


@dataclass(frozen=True)
class IntSpace:
    low: int
    high: int
    log: bool = False
    perturb_mode: str | None = None

    def sample(self, rng: random.Random) -> int:
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1)))
            return self.clamp(int(math.floor(x)))
        return rng.randint(self.low, self.high)

    def clamp(self, value: Value) -> int:
        return min(self.high, max(self.low, int(round(float(value)))))

    def contains(self, value: Value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def perturb(self, value: Value, rng: random.Random, explore: PerturbSpec) -> tuple[int, str]:
        mode = self.perturb_mode or explore.mode
        v = int(value)
        if mode == "noise":
            d = rng.gauss(0.0, explore.noise_std * (self.high - self.low))
            new = self.clamp(v + d)
            return new, f"{new - v:+d}"
        factor = rng.choice(explore.factors)
        new = self.clamp(v * factor)
        if new == v and factor != 1.0:  # a small int must still move, or it never explores
            new = self.clamp(v + (1 if factor > 1 else -1))
        return new, f"x{factor:g}"


@dataclass(frozen=True)
class CategoricalSpace:
    """Ordered: perturb moves to a neighbour. Unordered: perturb resamples."""

    values: tuple[Value, ...]
    ordered: bool = False

    def sample(self, rng: random.Random) -> Value:
        return rng.choice(self.values)

    def clamp(self, value: Value) -> Value:
        return value if self.contains(value) else self.values[0]

    def contains(self, value: Value) -> bool:
        return self._index(value) is not None

    def _index(self, value: Value) -> int | None:
        """Position of ``value``, matching the type too: 1, 1.0 and True are different choices."""
        for i, v in enumerate(self.values):
            if value == v and type(value) is type(v):
                return i
        return None

    def perturb(self, value: Value, rng: random.Random, explore: PerturbSpec) -> tuple[Value, str]:
        i = self._index(value)
        if not self.ordered or i is None:
            return rng.choice(self.values), "resample"
        if len(self.values) == 1:
            return value, "stay"
        step = rng.choice((-1, 1))
        if not 0 <= i + step < len(self.values):
            step = -step  # at an end the only neighbour is inward: always move, never stall
        j = i + step
        return self.values[j], ("up" if j > i else "down")


AnySpace = FloatSpace | IntSpace | CategoricalSpace


def sample_all(spaces: dict[str, AnySpace], rng: random.Random) -> dict[str, Any]:
    """Draw every hyperparameter from its prior, in a fixed (sorted) order."""
    return {name: spaces[name].sample(rng) for name in sorted(spaces)}
