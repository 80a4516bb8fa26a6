"""A real PyTorch task with no download: an MLP on scikit-learn's bundled 8x8 digits.

Tunes learning rate, momentum, weight decay (applied in place to the live SGD
optimizer, so its momentum buffers survive) and batch size. Score: validation accuracy
on a fixed split.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from pbt_mq import Trainable


@lru_cache(maxsize=1)
def dataset() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = perm[:1400], perm[1400:]
    return x[train], y[train], x[val], y[val]


class Digits(Trainable):
    def setup(self, hidden: int = 128) -> None:
        self.xt, self.yt, self.xv, self.yv = (t.to(self.device) for t in dataset())
        self.model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(self.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.apply(self.hparams)

    def apply(self, hparams: dict) -> None:
        self.hparams = dict(hparams)
        for g in self.opt.param_groups:  # in place: keep the momentum buffers
            g["lr"] = hparams["lr"]
            g["momentum"] = hparams["momentum"]
            g["weight_decay"] = hparams["weight_decay"]

    def train(self, steps: int) -> None:
        self.model.train()
        batch = int(self.hparams["batch_size"])
        for _ in range(steps):
            idx = torch.randint(len(self.xt), (batch,), generator=self.gen)
            loss = nn.functional.cross_entropy(self.model(self.xt[idx]), self.yt[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        logits = self.model(self.xv)
        acc = (logits.argmax(1) == self.yv).float().mean().item()
        loss = nn.functional.cross_entropy(logits, self.yv).item()
        return {"accuracy": acc, "val_loss": loss}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["rng"])
