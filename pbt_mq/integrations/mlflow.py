"""MLflow, as a tracker of ``worker.tracking``: ``[tracking] mlflow = "TRACKING_URI"``.

The MLflow experiment is the pbt experiment's name; each member has one run, named
``EXP/MEMBER`` and tagged ``pbt.experiment`` and ``pbt.member``: its first hyperparameters as
params, then at every segment's step its metrics and ``hparams/NAME`` (hyperparameters change
over a PBT run; params cannot), and for every exploit ``exploit/donor`` (the donor's number) and
``exploit/donor_step`` at the step it happened, with a tag ``pbt.exploit.SEQ`` that says it in
words; a replacement (its segment failed for good) likewise as ``replaced/...`` and
``pbt.replaced.SEQ`` (no donor: it restarted fresh). ``pbt.metric``/``pbt.mode`` list every
objective. A ``file:`` URI is a file store (MLflow 3 keeps it in maintenance mode and wants
``MLFLOW_ALLOW_FILE_STORE=true``, which naming one in ``[tracking]`` sets). HTTP calls time out
after 10 s and retry twice (``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` override): a server that is down delays only the sending.
mlflow-skinny is enough.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # before mlflow reads them
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from pbt_mq.config.experiment import Experiment  # noqa: E402
from pbt_mq.core.model import Lineage  # noqa: E402
from pbt_mq.worker.tracking import TrackerDown, donor_number, in_words, objectives, source  # noqa: E402


def _calling(fn: Any, *args: Any, **kw: Any) -> Any:
    """An MLflow call; "down" (5xx, no connection) becomes TrackerDown, a refusal (4xx) ValueError."""
    try:
        return fn(*args, **kw)
    except MlflowException as exc:
        if exc.get_http_status_code() >= 500:
            raise TrackerDown(str(exc)[:300]) from None
        raise ValueError(str(exc)[:300]) from None
    except OSError as exc:
        raise TrackerDown(str(exc)[:300]) from None


class MlflowTracker:
    name = "mlflow"

    def __init__(self, uri: str, cfg: Experiment, experiment: str) -> None:
        if uri.startswith("file:") or "://" not in uri:  # the experiment file asks for a file store by name
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.cfg, self.exp = cfg, experiment
        self.experiment_id: str | None = None
        self.params_done: set[str] = set()

    def _experiment_id(self) -> str:
        if self.experiment_id is None:
            found = _calling(self.client.get_experiment_by_name, self.cfg.name)
            if found is None:
                try:
                    self.experiment_id = _calling(self.client.create_experiment, self.cfg.name)
                except ValueError:  # created meanwhile by another sender
                    self.experiment_id = _calling(self.client.get_experiment_by_name, self.cfg.name).experiment_id
            else:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def new_id(self) -> None:
        return None  # the server names runs: created, then claimed

    def open(self, member: str, run_id: str | None) -> str:
        if run_id is not None:
            return run_id
        metric, mode = objectives(self.cfg)
        tags = {"pbt.experiment": self.exp, "pbt.member": member, "pbt.trainable": self.cfg.trainable,
                "pbt.metric": metric, "pbt.mode": mode}
        run = _calling(self.client.create_run, self._experiment_id(), run_name=f"{self.exp}/{member}", tags=tags)
        return run.info.run_id

    def log(self, run_id: str, step: int, metrics: dict[str, float], hparams: dict[str, Any], when_ms: int) -> None:
        ms = when_ms  # the segment's own time: two segments at one step stay two entries
        values = {**metrics, **{f"hparams/{k}": v for k, v in hparams.items() if _number(v)}}
        batch = [Metric(k, float(v), ms, step) for k, v in values.items() if not math.isinf(float(v))]
        needs = self._needs_params(run_id)
        params = [Param(k, str(v)) for k, v in hparams.items()] if needs else []
        _calling(self.client.log_batch, run_id, metrics=batch, params=params)
        self.params_done.add(run_id)  # only now: a batch that failed logs its params at the next try

    def _needs_params(self, run_id: str) -> bool:
        """Params are set once, with the run's first logged segment: MLflow never changes a param.
        A run another sender began may have them already."""
        return run_id not in self.params_done and not _calling(self.client.get_run, run_id).data.params

    def exploit(self, run_id: str, rec: Lineage) -> None:
        self._lineage(run_id, rec, "exploit")

    def replaced(self, run_id: str, rec: Lineage) -> None:
        self._lineage(run_id, rec, "replaced")

    def _lineage(self, run_id: str, rec: Lineage, what: str) -> None:
        """``WHAT/donor_step`` (0: a fresh restart) and ``WHAT/donor`` at its step; tags in words."""
        ms = int(time.time() * 1000)
        donor = donor_number(rec)
        metrics = [Metric(f"{what}/donor_step", float(rec.parent_step or 0), ms, rec.step)]
        if donor is not None:
            metrics.append(Metric(f"{what}/donor", float(donor), ms, rec.step))
        tags = [RunTag(f"pbt.{what}.{rec.seq:06d}", in_words(rec)[:4900]), RunTag(f"pbt.last_{what}", source(rec))]
        _calling(self.client.log_batch, run_id, metrics=metrics, tags=tags)

    def delete(self, run_id: str) -> None:
        _calling(self.client.delete_run, run_id)

    def close(self, run_id: str, finished: bool) -> None:
        if finished:
            _calling(self.client.set_terminated, run_id, RunStatus.to_string(RunStatus.FINISHED))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def tracker(uri: str, cfg: Experiment, experiment: str) -> MlflowTracker:
    return MlflowTracker(uri, cfg, experiment)
