"""Hyperparameters applied to live optimizers in place, as PBT needs (shared by the integrations).

An optimizer rebuilt or reloaded from a checkpoint would lose the new values (ray#29060: an
exploit restored the donor's optimizer, lr and all, and the explored lr never took effect), so
every integration calls ``apply_hparams`` after any restore, before training on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ALIASES = {"learning_rate": "lr"}  # Hugging Face's name for the param group's lr


def apply_hparams(optimizers: Iterable[Any], hparams: Mapping[str, Any], schedulers: Iterable[Any] = ()) -> set[str]:
    """Set every hyperparameter that names a param-group key (``lr``, ``momentum``, ``weight_decay``,
    ``eps``, ...; ``learning_rate`` means ``lr``) in every param group, in place. ``weight_decay``
    leaves groups at 0 alone while others are not (the no-decay group of biases and norms). An
    lr also becomes each scheduler's base lr, or the scheduler would overwrite it at its next
    step. Returns the names it applied."""
    optimizers, schedulers = list(optimizers), list(schedulers)
    applied: set[str] = set()
    for name, value in hparams.items():
        key = ALIASES.get(name, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for opt in optimizers:
            groups = [g for g in opt.param_groups if key in g]
            if key == "weight_decay" and any(g[key] for g in groups):
                groups = [g for g in groups if g[key]]
            for g in groups:
                g[key] = value
                if key == "lr" and "initial_lr" in g:
                    g["initial_lr"] = value
            applied |= {name} if groups else set()
        if key == "lr":
            for sched in schedulers:
                if hasattr(sched, "base_lrs"):
                    sched.base_lrs = [value for _ in sched.base_lrs]
    return applied
