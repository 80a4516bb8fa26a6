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
operations per direction: an 8-member, 800-step experiment is bound by the fleet, not the maths.
"""

from __future__ import annotations

import math
import random

from pbt_mq import Trainable
from pbt_mq.tools.study.nqm import NQM


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
