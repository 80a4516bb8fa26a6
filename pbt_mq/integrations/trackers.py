"""The tracker backends ``pbt-worker`` hands its tracking sender (``worker.tracking``).

``BACKENDS`` maps a ``[tracking]`` key to a factory ``(target, cfg, experiment) -> Tracker``.
Importing this module imports no tracker library: each factory imports its integration (and so
MLflow or W&B) when an experiment first asks for it; a missing one raises ImportError, which the
sender reports once with the extra to install.
"""

from __future__ import annotations

from pbt_mq.config.experiment import Experiment
from pbt_mq.worker.tracking import Tracker, TrackerFactory


def mlflow(uri: str, cfg: Experiment, experiment: str) -> Tracker:
    from pbt_mq.integrations import mlflow as backend  # lazy on purpose: an optional dependency (extra mlflow)

    return backend.tracker(uri, cfg, experiment)


def wandb(project: str, cfg: Experiment, experiment: str) -> Tracker:
    from pbt_mq.integrations import wandb as backend  # lazy on purpose: an optional dependency (extra wandb)

    return backend.tracker(project, cfg, experiment)


BACKENDS: dict[str, TrackerFactory] = {"mlflow": mlflow, "wandb": wandb}
