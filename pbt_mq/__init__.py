"""pbt-mq: Population Based Training as a message-queue fleet (Redis streams + RQ + S3).

The user API: ``Trainable`` (a class with six methods) or ``session()`` (keep your own loop:
``run = pbt_mq.session()`` ... ``run = run.report(metrics, step=step, state=state)``).
Neither imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pbt_mq.store.checkpoint import load_checkpoint
from pbt_mq.worker.trainable import Trainable

if TYPE_CHECKING:
    from pbt_mq.worker.session import Run, SessionError, session

__all__ = ["Run", "SessionError", "Trainable", "__version__", "load_checkpoint", "session"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``session``, ``Run`` and ``SessionError`` on first use (PEP 562): ``import pbt_mq`` stays as light as it was."""
    if name in ("session", "Run", "SessionError"):
        from pbt_mq.worker import session as module  # lazy on purpose: only a user's training function needs it

        return getattr(module, name)
    raise AttributeError(f"module 'pbt_mq' has no attribute {name!r}")
