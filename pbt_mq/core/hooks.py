"""Hooks: how observers (Prometheus, TensorBoard, trackers) see the arbiter and the workers.

In the spirit of dramatiq's middleware: the arbiter and the workers call ``Hooks`` at fixed
points and know nothing of who listens; ``pbt-arbiter --metrics-port`` or ``pbt-worker
--tensorboard-dir`` add a ``Hook`` to the list. With no hook installed a call is an empty loop.
A hook that raises is logged and never breaks a decision or a segment.

Lifecycle of a segment on a worker: ``checkpoint_loaded`` (when it starts cold or recovered),
``checkpoint_saved`` (once its checkpoint is in the store; with ``overlap_upload`` this comes
from the upload thread, after the event), ``segment_done`` (its event is published). On an
arbiter: ``decided`` once per handled ready event.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class Hook:
    """Override what you need; every method is a no-op here."""

    def decided(self, experiment: str, outcome: str, entry_id: bytes | str) -> None:
        """An arbiter handled a ready event: ``outcome`` is continue|exploit|done|duplicate|dead|error."""

    def segment_done(self, cmd: Any, event: Any) -> None:
        """A worker published ``event`` (a ReadyEvent) for ``cmd`` (the SegmentCommand it ran)."""

    def checkpoint_saved(self, experiment: str, nbytes: int, seconds: float) -> None:
        """A checkpoint was serialized, hashed and uploaded (``seconds`` for all of it)."""

    def checkpoint_loaded(self, experiment: str, nbytes: int, seconds: float) -> None:
        """A checkpoint was downloaded, verified and loaded."""


class Hooks:
    """The installed hooks of one process, called in order."""

    def __init__(self, hooks: list[Hook] | None = None) -> None:
        self.hooks: list[Hook] = list(hooks or [])

    def add(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def _call(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(*args)
            except Exception as exc:  # an observer must never break training or deciding
                log.warning("hook %s.%s failed: %s", type(hook).__name__, name, exc)

    def decided(self, experiment: str, outcome: str, entry_id: bytes | str) -> None:
        self._call("decided", experiment, outcome, entry_id)

    def segment_done(self, cmd: Any, event: Any) -> None:
        self._call("segment_done", cmd, event)

    def checkpoint_saved(self, experiment: str, nbytes: int, seconds: float) -> None:
        self._call("checkpoint_saved", experiment, nbytes, seconds)

    def checkpoint_loaded(self, experiment: str, nbytes: int, seconds: float) -> None:
        self._call("checkpoint_loaded", experiment, nbytes, seconds)
