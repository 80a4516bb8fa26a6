"""The user API: wrap an existing PyTorch loop in a ``Trainable``.

Fill in ``setup``, ``apply``, ``train``, ``evaluate``, ``state_dict`` and
``load_state_dict``. A worker builds one with the member's hyperparameters, then for
each segment loads a checkpoint (or keeps the live model), calls ``apply`` with the
segment's hyperparameters (change them *in place*: set the optimizer's ``lr``, do
not rebuild it, or its momentum is lost), ``train``s, ``evaluate``s and saves.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any


class Trainable:
    """Base class for a member's training state. torch is not required by the base."""

    def __init__(self, hparams: dict[str, Any], *, seed: int = 0, device: str = "cpu", **args: Any):
        self.hparams = dict(hparams)
        self.seed = seed
        self.device = device
        self.args = args
        self.setup(**args)

    def setup(self, **args: Any) -> None:
        """Build the model, optimizer and data from ``self.hparams``; ``args`` come from the file's [trainable_args]."""

    def apply(self, hparams: dict[str, Any]) -> None:
        """Set new hyperparameters in place (called before every segment)."""
        self.hparams = dict(hparams)

    def train(self, steps: int) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class TrainableImportError(ImportError):
    pass


def allowed(path: str, prefixes: tuple[str, ...]) -> bool:
    """Is ``path``'s module under one of ``prefixes`` (``PBT_TRAINABLES``; empty: any)?"""
    module = path.partition(":")[0]
    return not prefixes or any(module == p or module.startswith(p + ".") for p in prefixes)


def import_trainable(path: str, prefixes: tuple[str, ...] = ()) -> type:
    """Import ``package.module:Name``; the current directory is importable, as for ``python -m``.

    The experiment names it, and whoever can write to Redis writes experiments, so only two kinds
    of object are accepted: a ``Trainable`` subclass, or a plain Python function defined in that
    module (the loop API), not in the standard library; with ``prefixes`` (``PBT_TRAINABLES`` on
    workers) only modules under them are imported at all."""
    module_name, _, attr = path.partition(":")
    if not allowed(path, prefixes):
        raise TrainableImportError(f"trainable {path!r}: module {module_name!r} is not under this worker's"
                                   f" PBT_TRAINABLES ({', '.join(prefixes)}); refused unimported")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainableImportError(
            f"trainable {path!r}: cannot import module {module_name!r} ({exc}); it must be importable"
            " on every worker (install it, or run pbt-worker from the directory that holds it)"
        ) from None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise TrainableImportError(f"trainable {path!r}: {module_name} has no attribute {attr!r}")
    if inspect.isclass(obj):
        if not issubclass(obj, Trainable):
            raise TrainableImportError(f"trainable {path!r}: a class must subclass pbt_mq.Trainable")
    elif not inspect.isfunction(obj) or obj.__module__ != module_name:
        raise TrainableImportError(f"trainable {path!r}: must be a Trainable subclass or a Python function"
                                   f" defined in {module_name} (the loop API)")
    elif module_name.partition(".")[0] in sys.stdlib_module_names:
        raise TrainableImportError(f"trainable {path!r}: a standard-library function is never a trainable")
    return obj
