"""The toy example of the PBT paper (Jaderberg et al. 2017, section 4 / figure 2).

θ starts at [0.9, 0.9]. The true objective is Q(θ) = 1.2 − (θ0² + θ1²), maximal at
θ = 0. A member only sees the surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²) and takes
gradient-ascent steps on it, so with h = [1, 0] it can only shrink θ0, with [0, 1]
only θ1. Alone, neither reaches 1.2; with exploit (copy the better θ and h) and
explore (perturb h) the population does.
"""

from __future__ import annotations

import time

import torch

from pbt_mq import Trainable


class Toy(Trainable):
    def setup(self, step_size: float = 0.05, delay_s: float = 0.0) -> None:
        self.step_size = step_size
        self.delay_s = delay_s  # simulated compute per train() call, for tests and demos
        self.theta = torch.tensor([0.9, 0.9], dtype=torch.float64)

    def train(self, steps: int) -> None:
        h = torch.tensor([self.hparams["h0"], self.hparams["h1"]], dtype=torch.float64)
        for _ in range(steps):
            grad = -2.0 * h * self.theta  # ∇θ Q̂(θ|h)
            self.theta = self.theta + self.step_size * grad
        if self.delay_s:
            time.sleep(self.delay_s)

    def evaluate(self) -> dict[str, float]:
        return {"q": float(1.2 - (self.theta**2).sum())}

    def state_dict(self) -> dict:
        return {"theta": self.theta.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.theta = state["theta"].clone()
