"""The toy example of the PBT paper (Jaderberg et al. 2017, section 4 / figure 2).

θ starts at [0.9, 0.9]. The true objective is Q(θ) = 1.2 − (θ0² + θ1²), maximal at
θ = 0. A member only sees the surrogate Q̂(θ|h) = 1.2 − (h0·θ0² + h1·θ1²) and takes
gradient-ascent steps on it, so with h = [1, 0] it can only shrink θ0, with [0, 1]
only θ1. Alone, neither reaches 1.2; with exploit (copy the better θ and h) and
explore (perturb h) the population does.

``explore_std > 0`` is the paper's "explore only" ablation: the arbiter explores only
after an exploit, so here the member perturbs its own h by N(0, explore_std) (clamped to
[0, 1]) at the start of every segment but the first, and never copies anyone. That h lives
in the checkpoint, and ``evaluate`` reports the h in use, so the run can be read back.
"""

from __future__ import annotations

import time

import torch

from pbt_mq import Trainable


class Toy(Trainable):
    def setup(self, step_size: float = 0.05, delay_s: float = 0.0, explore_std: float = 0.0) -> None:
        self.step_size = step_size
        self.delay_s = delay_s  # simulated compute per train() call, for tests and demos
        self.explore_std = explore_std
        self.theta = torch.tensor([0.9, 0.9], dtype=torch.float64)
        self.h = torch.tensor([self.hparams["h0"], self.hparams["h1"]], dtype=torch.float64)
        self.segments = 0
        self.gen = torch.Generator().manual_seed(self.seed)

    def current_h(self) -> torch.Tensor:
        """The h of this segment: the arbiter's, or (explore only) the member's own random walk."""
        if not self.explore_std:
            self.h = torch.tensor([self.hparams["h0"], self.hparams["h1"]], dtype=torch.float64)
        elif self.segments > 0:
            noise = torch.randn(2, generator=self.gen, dtype=torch.float64)
            self.h = (self.h + self.explore_std * noise).clamp(0.0, 1.0)
        self.segments += 1
        return self.h

    def train(self, steps: int) -> None:
        h = self.current_h()
        for _ in range(steps):
            grad = -2.0 * h * self.theta  # ∇θ Q̂(θ|h)
            self.theta = self.theta + self.step_size * grad
        if self.delay_s:
            time.sleep(self.delay_s)

    def evaluate(self) -> dict[str, float]:
        return {"q": float(1.2 - (self.theta**2).sum()), "h0": float(self.h[0]), "h1": float(self.h[1])}

    def state_dict(self) -> dict:
        return {"theta": self.theta.clone(), "h": self.h.clone(), "segments": self.segments, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.theta = state["theta"].clone()
        if "h" in state:  # checkpoints written before explore_std existed have only theta
            self.h, self.segments = state["h"].clone(), int(state["segments"])
            self.gen.set_state(state["gen"])
