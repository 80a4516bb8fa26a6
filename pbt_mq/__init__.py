"""pbt-mq: Population Based Training as a message-queue fleet (Redis streams + RQ + S3)."""

from pbt_mq.store.checkpoint import load_checkpoint
from pbt_mq.worker.trainable import Trainable

__all__ = ["Trainable", "__version__", "load_checkpoint"]
__version__ = "0.1.0"
