"""Hugging Face Transformers under PBT: ``train(trainer)`` in the function an experiment names.

::

    import pbt_mq
    from pbt_mq.integrations.hf import arguments, train

    def main():
        run = pbt_mq.session()
        torch.manual_seed(run.seed)
        trainer = Trainer(model=build(), args=arguments(run, "out"), train_dataset=..., eval_dataset=...)
        train(trainer, run)               # every assignment of this call, until run.done

One ``Trainer.train`` serves the whole call. ``PBTCallback`` counts optimizer steps; when
``run.should_report`` says the segment is over it asks the Trainer to evaluate, reports its
metrics (``eval_loss``, and ``eval_*`` from ``compute_metrics``) with the training state, and
takes the next assignment in place: for a checkpoint (an exploit, another member, a cold start)
it loads the model, optimizer, LR scheduler, step and RNG into the live objects, and for every
assignment it sets the hyperparameters in the optimizer (``learning_rate`` or ``lr``,
``weight_decay``, ...: ``integrations.optim``; ``apply(trainer, hparams)`` takes the rest).
The state is plain tensors and numbers, saved and loaded weights-only like every checkpoint,
never pickled ``TrainingArguments`` (Ray's Trainer integration needed checkpoints on disk,
ray#13765; here the state travels in memory and in pbt-mq's own store).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from pbt_mq.integrations.optim import apply_hparams
from pbt_mq.worker.session import Run, SessionError

NEVER = 10**12  # steps: the Trainer never stops on its own; run.done stops it


def arguments(run: Run, output_dir: str, **kwargs: Any) -> TrainingArguments:
    """``TrainingArguments`` for PBT: training that only PBT stops, a constant schedule (PBT sets
    the learning rate), no evaluation, saving, logging or reporting of the Trainer's own, the
    member's seed and the worker's device. ``kwargs`` override any of them."""
    dev = torch.device(run.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # the Trainer uses the current CUDA device
    lr = run.hparams.get("learning_rate", run.hparams.get("lr", 5e-5))
    base = dict(output_dir=output_dir, max_steps=NEVER, lr_scheduler_type="constant", learning_rate=float(lr),
                eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
                seed=run.seed, use_cpu=dev.type == "cpu")
    return TrainingArguments(**{**base, **kwargs})


def training_state(model: Any, optimizer: Any, scheduler: Any, state: Any) -> dict[str, Any]:
    """Everything training goes on from: weights, optimizer, scheduler, step and epoch, torch's RNG."""
    out = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
           "trainer": {"global_step": int(state.global_step), "epoch": float(state.epoch or 0.0)},
           "rng": torch.get_rng_state()}
    if scheduler is not None:
        out["scheduler"] = scheduler.state_dict()
    return out


def load_training_state(saved: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, state: Any) -> None:
    """Into the live objects, in place (the Trainer keeps its references to them)."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None and "scheduler" in saved:
        scheduler.load_state_dict(saved["scheduler"])
    state.global_step = int(saved["trainer"]["global_step"])
    state.epoch = float(saved["trainer"]["epoch"])
    torch.set_rng_state(saved["rng"].cpu())


class PBTCallback(TrainerCallback):
    """Segments inside one ``Trainer.train``: evaluate and report at each segment's end, then
    continue with the next assignment, or stop the training when the run is done."""

    def __init__(self, run: Run, apply: Callable[[Trainer | None, dict[str, Any]], None] | None = None,
                 trainer: Trainer | None = None) -> None:
        self.run, self.apply, self.trainer = run, apply, trainer
        self.step = run.step

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._enter(state, kw)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.step += 1
        if self.run.should_report(self.step):
            control.should_evaluate = True

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kw: Any) -> None:
        if self.run.done or not self.run.should_report(self.step):
            return  # an evaluation of the Trainer's own schedule, not a segment's end
        saved = training_state(kw["model"], kw["optimizer"], kw.get("lr_scheduler"), state)
        self.run = self.run.report(dict(metrics or {}), step=self.step, state=saved)
        if self.run.done:
            control.should_training_stop = True
        else:
            self._enter(state, kw)

    def _enter(self, state: Any, kw: dict[str, Any]) -> None:
        """Start the current assignment: its checkpoint (if any) into the live objects, then its hyperparameters."""
        run, opt, sched = self.run, kw["optimizer"], kw.get("lr_scheduler")
        if run.state is not None:
            load_training_state(run.state, kw["model"], opt, sched, state)
        self.step = run.step
        apply_hparams([opt], run.hparams, [sched] if sched is not None else [])
        if self.apply is not None:
            self.apply(self.trainer, run.hparams)


def train(trainer: Trainer, run: Run, apply: Callable[[Trainer | None, dict[str, Any]], None] | None = None) -> Run:
    """Train through every assignment of this call; returns the done run."""
    callback = PBTCallback(run, apply, trainer)
    trainer.add_callback(callback)
    trainer.remove_callback(PrinterCallback)  # a dict per evaluation on stdout; the worker logs each segment
    try:
        trainer.train()
    finally:
        trainer.remove_callback(callback)
    if not callback.run.done:
        raise SessionError(f"Trainer.train returned at step {callback.step} before the run was done (max_steps or"
                           " num_train_epochs reached?): build its arguments with pbt_mq.integrations.hf.arguments")
    return callback.run
