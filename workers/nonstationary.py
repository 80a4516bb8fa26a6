"""A task whose best learning rate changes 10x halfway through training (falls, or rises).

Linear regression with minibatch SGD (gradient norm clipped at ``clip``, as one would
for a real model), on inputs whose variances span ``cond`` (an ill-conditioned problem,
so a larger learning rate makes more progress as long as it is stable). At
``switch_step`` the input gain changes by ``gain`` (a sensor recalibrated, a feature
rescaled): every curvature changes ``gain``-fold, so the learning rate that was best
becomes ``gain`` times too large (gain > 1: workers/nonstationary.toml) or too small
(gain < 1: workers/rising.toml). With ``target_shift`` > 0 the relation itself moves at the
switch too (the regression target jumps by that many standard deviations per weight), so
everyone's loss jumps there: a member that reaches the switch first scores far worse than
the others' scores from before it. No fixed value is right for both halves; a schedule is.

The score is the exact expected squared error on the current input distribution (no
validation-set noise), so differences between runs come from training alone.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from pbt_mq import Trainable


class Drift(Trainable):
    def setup(
        self,
        dim: int = 16,
        cond: float = 1000.0,
        noise: float = 0.03,
        batch: int = 16,
        switch_step: int = 200,
        gain: float = 10.0,
        clip: float = 1.0,
        target_shift: float = 0.0,
        pre_gain: float = 1.0,
        delay_s: float = 0.0,
    ) -> None:
        problem = torch.Generator().manual_seed(1234)  # the same problem for every member
        self.var = torch.logspace(0.0, -math.log10(cond), dim, dtype=torch.float64)
        self.w_true = torch.randn(dim, generator=problem, dtype=torch.float64)
        self.w_after = self.w_true + target_shift * torch.randn(dim, generator=problem, dtype=torch.float64)
        self.noise, self.batch, self.switch_step, self.gain, self.clip = noise, batch, switch_step, gain, clip
        self.pre_gain = pre_gain
        self.delay_s = delay_s  # simulated compute per train() call (measurements of waiting, e.g. exploit.synch)
        self.model = nn.Linear(dim, 1, bias=False, dtype=torch.float64)
        nn.init.zeros_(self.model.weight)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.step = 0
        self.apply(self.hparams)

    def apply(self, hparams: dict) -> None:
        self.hparams = dict(hparams)
        for g in self.opt.param_groups:
            g["lr"] = hparams["lr"]

    def scale(self, step: int) -> torch.Tensor:
        """Per-feature input variance at ``step``: ``pre_gain`` times the base, ``gain`` times that from
        ``switch_step`` on."""
        return self.var * self.pre_gain * (self.gain if step >= self.switch_step else 1.0)

    def target(self, step: int) -> torch.Tensor:
        """The true weights at ``step``: they move at ``switch_step`` when ``target_shift`` > 0."""
        return self.w_after if step >= self.switch_step else self.w_true

    def train(self, steps: int) -> None:
        for _ in range(steps):
            x = torch.randn(self.batch, len(self.var), generator=self.gen, dtype=torch.float64) * self.scale(self.step).sqrt()
            y = x @ self.target(self.step) + self.noise * torch.randn(self.batch, generator=self.gen, dtype=torch.float64)
            loss = 0.5 * (self.model(x).squeeze(1) - y).pow(2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.opt.step()
            self.step += 1
        if self.delay_s:
            time.sleep(self.delay_s)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        err = self.model.weight[0] - self.target(self.step)
        loss = float((err.pow(2) * self.scale(self.step)).sum() + self.noise**2)
        return {"loss": loss, "phase": 1.0 if self.step < self.switch_step else 2.0}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.gen.get_state(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["rng"])
        self.step = int(state["step"])
