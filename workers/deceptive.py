"""A deceptive schedule: the noisy quadratic model of SGD, where the greedy learning rate is wrong.

The noisy quadratic model (NQM; Wu et al. 2018, "Understanding short-horizon bias in stochastic
meta-optimization"; Zhang et al. 2019): SGD on L(θ) = ½ Σ λ_i θ_i², with curvatures λ_i
log-spaced from 1 down to 1/``cond`` and gradient noise of variance λ_i σ² per direction (noise
covariance proportional to the Hessian). The expected second moment m_i = E[θ_i²] then follows a
deterministic recursion, one step at learning rate lr:

    m_i <- (1 - lr λ_i)² m_i + lr² λ_i σ²,      expected loss = ½ Σ λ_i m_i,

so a segment of k steps at one lr is an affine map, m_i <- a_i^k m_i + b_i (1 - a_i^k) / (1 - a_i)
with a_i = (1 - lr λ_i)² and b_i = lr² λ_i σ² (``NQM.affine``: exact, not simulated). A small lr
lowers the loss at once (the noise floor, about lr σ² λ_i / 4 per direction, falls), but the
low-curvature directions (initial m_i = λ_i^-``power``: most of the error lies there) barely move;
a large lr looks worse at every ready point until a late decay removes the noise. Greedy selection
(PBT copies whatever scores best at the next ready point) therefore decays the lr far too early;
the best schedule holds it at the top of the prior and decays late. Because the dynamics are
deterministic, that best schedule can be computed offline (``pbt_mq.tools.study.deceptive``).

The score is the exact expected loss (no data, no sampling), so runs differ only in the
hyperparameters PBT chose. ``noise`` > 0 multiplies the reported ``loss`` by exp(noise · z), z a
standard normal drawn from the member's seed and step (an evaluation on a finite validation set);
``true_loss`` is always the exact value, never selected on. A member step is a few float
operations per direction: an 8-member, 400-step experiment is bound by the fleet, not the maths.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from pbt_mq import Trainable


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


class Deceptive(Trainable):
    def setup(self, dim: int = 16, cond: float = 1000.0, sigma2: float = 0.1, power: float = 0.5,
              noise: float = 0.0) -> None:
        self.nqm = NQM.make(dim, cond, sigma2, power)
        self.noise = float(noise)
        self.m = list(self.nqm.start)
        self.step = 0

    def train(self, steps: int) -> None:
        self.m = self.nqm.advance(self.m, float(self.hparams["lr"]), steps)
        self.step += steps

    def evaluate(self) -> dict[str, float]:
        true = self.nqm.loss(self.m)
        if not self.noise or not math.isfinite(true):
            return {"loss": true, "true_loss": true}
        z = random.Random(self.seed * 1_000_003 + self.step).gauss(0.0, 1.0)
        return {"loss": true * math.exp(self.noise * z), "true_loss": true}

    def state_dict(self) -> dict:
        return {"m": list(self.m), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.m = [float(x) for x in state["m"]]
        self.step = int(state["step"])
