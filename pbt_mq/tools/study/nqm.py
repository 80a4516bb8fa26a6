"""The noisy quadratic model of SGD (NQM; Wu et al. 2018, "Understanding short-horizon bias in
stochastic meta-optimization"; Zhang et al. 2019): the maths of ``pbt study``'s deceptive task, shared
by its example trainable (workers/deceptive.py) and the offline optimum (study.deceptive), so the
library never imports the examples.

SGD on L(θ) = ½ Σ λ_i θ_i², curvatures λ_i log-spaced from 1 down to 1/``cond``, gradient noise of
variance λ_i σ² per direction: the expected second moment m_i = E[θ_i²] follows a deterministic
recursion, so a segment of k steps at one lr is an exact affine map (``NQM.affine``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NQM:
    """One noisy quadratic problem: curvatures, the starting E[θ²] per direction, the gradient noise."""

    curvature: tuple[float, ...]
    start: tuple[float, ...]
    sigma2: float

    @classmethod
    def make(cls, dim: int = 16, cond: float = 1000.0, sigma2: float = 0.1, power: float = 0.5) -> NQM:
        if dim < 2 or cond < 1 or sigma2 < 0:
            raise ValueError(f"NQM: need dim >= 2, cond >= 1, sigma2 >= 0; got {dim}, {cond}, {sigma2}")
        h = tuple(cond ** (-i / (dim - 1)) for i in range(dim))  # 1 ... 1/cond, log-spaced
        return cls(h, tuple(x**-power for x in h), float(sigma2))

    def affine(self, lr: float, steps: int) -> tuple[list[float], list[float]]:
        """k steps at ``lr`` as m_i <- p_i m_i + q_i, per direction."""
        ps, qs = [], []
        for h in self.curvature:
            a, b = (1.0 - lr * h) ** 2, lr * lr * h * self.sigma2
            if a > 1.0 and steps * math.log(a) > 700.0:  # unstable (lr > 2 / λ): diverged
                ps.append(math.inf)
                qs.append(math.inf)
                continue
            p = a**steps
            ps.append(p)
            qs.append(b * steps if abs(1.0 - a) < 1e-15 else b * (1.0 - p) / (1.0 - a))
        return ps, qs

    def advance(self, m: Sequence[float], lr: float, steps: int) -> list[float]:
        ps, qs = self.affine(lr, steps)
        return [p * x + q for p, x, q in zip(ps, m, qs, strict=True)]

    def loss(self, m: Sequence[float]) -> float:
        return 0.5 * sum(h * x for h, x in zip(self.curvature, m, strict=True))
