"""Two objectives at odds, for multi-objective PBT: digits accuracy against model size.

The MLP of ``workers/digits.py`` trained with an L1 penalty applied as a proximal step (soft-thresholding
the first layer after each SGD step), so weights reach exactly zero. A larger ``l1`` gives a sparser,
smaller model and, past a point, a less accurate one. ``evaluate`` reports ``accuracy`` (max),
``density`` (min: the fraction of first-layer weights that are not zero, the model's size) and
``weighted = accuracy - weight * density`` (what single-objective PBT on a weighted sum ranks).
"""

from __future__ import annotations

import torch

from workers.digits import Digits


class SparseDigits(Digits):
    def setup(self, hidden: int = 64, weight: float = 0.5) -> None:
        self.weight = weight
        super().setup(hidden=hidden)

    def apply(self, hparams: dict) -> None:
        super().apply({"weight_decay": 0.0, "batch_size": 64, **hparams})

    def train(self, steps: int) -> None:
        for _ in range(steps):
            super().train(1)
            with torch.no_grad():  # proximal L1 step: shrink toward zero, and stop there
                w = self.model[0].weight
                w.copy_(w.sign() * (w.abs() - self.hparams["lr"] * self.hparams["l1"]).clamp_min(0.0))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        out = super().evaluate()
        density = (self.model[0].weight != 0).float().mean().item()
        return {**out, "density": density, "weighted": out["accuracy"] - self.weight * density}
