"""PyTorch Lightning under PBT: ``fit(run, module, datamodule)`` in the function an experiment names.

::

    import lightning as L
    import pbt_mq
    from pbt_mq.integrations.lightning import fit

    def main():
        run = pbt_mq.session()
        L.seed_everything(run.seed)
        fit(run, MyModule(), MyData())    # every assignment of this call, until run.done

Each assignment is one ``Trainer.fit``, stopped (``trainer.should_stop``) when
``run.should_report(trainer.global_step)``, then ``Trainer.validate`` for the metrics (log the
experiment's metric in ``validation_step``). The checkpoint is Lightning's own: everything
``Trainer.save_checkpoint`` writes (weights, optimizers, LR schedulers, loop progress, callback
and precision state), restored by Lightning (``fit(ckpt_path=...)``, weights only) whether the
next assignment continues warm, copies a donor, or serves another member. After every restore the
assignment's hyperparameters go into the optimizers in place (``integrations.optim``): those that
name a param-group key (``lr``, ``momentum``, ``weight_decay``...); ``apply(module, hparams)``
takes the rest. ``[ready] steps`` counts optimizer steps (``trainer.global_step``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from pbt_mq.integrations.optim import apply_hparams
from pbt_mq.worker.session import Run, SessionError

QUIET = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")


class PBTCallback(pl.Callback):
    """Applies an assignment's hyperparameters once Lightning has restored the training state,
    and stops the fit where the segment ends."""

    def __init__(self, run: Run, apply: Callable[[pl.LightningModule, dict[str, Any]], None] | None = None):
        self.run = run
        self.apply = apply

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        hp = self.run.hparams
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        apply_hparams(trainer.optimizers, hp, schedulers)
        if self.apply is not None:
            self.apply(pl_module, hp)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.run.should_report(trainer.global_step):
            trainer.should_stop = True


def trainer_defaults(device: str) -> dict[str, Any]:
    """What every segment's Trainer gets unless ``fit`` is told otherwise: the worker's device,
    no validation inside the fit (``fit`` validates at the segment's end), no files, no bars."""
    dev = torch.device(device)
    accel = {"cpu": ("cpu", 1), "cuda": ("gpu", [dev.index or 0]), "mps": ("mps", 1)}.get(dev.type, ("auto", "auto"))
    return dict(accelerator=accel[0], devices=accel[1], max_steps=-1, max_epochs=-1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, check_val_every_n_epoch=None, val_check_interval=10**9)


def fit(run: Run, model: pl.LightningModule, datamodule: pl.LightningDataModule | None = None, *,
        train_dataloaders: Any = None, val_dataloaders: Any = None,
        apply: Callable[[pl.LightningModule, dict[str, Any]], None] | None = None, **trainer_kwargs: Any) -> Run:
    """Train ``model`` through every assignment of this call; returns the done run."""
    for name in QUIET:  # a Trainer per segment: its start-up lines would fill the worker's log
        logging.getLogger(name).setLevel(logging.WARNING)
    data = dict(datamodule=datamodule) if datamodule is not None else dict(train_dataloaders=train_dataloaders)
    val = dict(datamodule=datamodule) if datamodule is not None else dict(dataloaders=val_dataloaders)
    with tempfile.TemporaryDirectory(prefix="pbt-lightning-") as tmp:
        last = Path(tmp) / "last.ckpt"
        resume: Path | None = None
        while not run.done:
            if run.state is not None:  # a checkpoint to start from: Lightning restores it all
                torch.save(run.state, last)
                resume = last
            callback = PBTCallback(run, apply)
            extra = list(trainer_kwargs.pop("callbacks", None) or [])
            trainer = pl.Trainer(**{**trainer_defaults(run.device), **trainer_kwargs, "callbacks": [callback, *extra]})
            trainer_kwargs["callbacks"] = extra
            trainer.fit(model, ckpt_path=resume, weights_only=True, **data)
            if not run.should_report(trainer.global_step):
                raise SessionError(f"Trainer.fit stopped at step {trainer.global_step}, before the segment's end"
                                   " (max_steps, max_epochs or max_time reached?); leave them to PBT")
            results = trainer.validate(model, verbose=False, **val)
            metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            trainer.save_checkpoint(last)
            resume = last
            state = torch.load(last, map_location=run.device, weights_only=True)  # pbt-mq loads it weights-only too
            run = run.report(metrics, step=trainer.global_step, state=state)
    return run
