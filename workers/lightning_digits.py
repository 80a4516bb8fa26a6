"""PBT with PyTorch Lightning: a LightningModule and a LightningDataModule written as usual, on
scikit-learn's bundled digits (no download), plus the three lines of ``main``.

    pip install 'pbt-mq[torch,examples,lightning]'
    pbt local workers/lightning_digits.toml

``fit`` (``pbt_mq.integrations.lightning``) runs one ``Trainer.fit`` per segment and keeps the
whole training state in the checkpoint; ``lr`` and ``momentum`` are set in the live SGD
optimizer after every restore, so an exploit's explored values take effect.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pbt_mq
from pbt_mq.integrations.lightning import fit
from workers.digits import dataset


class DigitsModule(L.LightningModule):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("accuracy", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.0)  # PBT sets lr and momentum


class DigitsData(L.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        xt, yt, _, _ = dataset()
        return DataLoader(TensorDataset(xt, yt), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        _, _, xv, yv = dataset()
        return DataLoader(TensorDataset(xv, yv), batch_size=len(xv))


def main(hidden: int = 64, batch_size: int = 64) -> None:
    run = pbt_mq.session()
    L.seed_everything(run.seed, verbose=False)
    fit(run, DigitsModule(hidden), DigitsData(batch_size))
