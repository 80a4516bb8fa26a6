"""Weights & Biases, as a tracker of ``worker.tracking``: ``[tracking] wandb = "PROJECT"``.

One run per member, id claimed in ``pbt:{EXP}:runs`` before it is created, named ``EXP/MEMBER``
and grouped by ``EXP``; its config holds ``pbt/run``, the experiment, the member and its first
hyperparameters. Each segment logs its metrics and ``hparams/NAME`` against ``pbt/step`` (a
member's step goes back when it copies a donor that is behind it, and W&B's own step may not),
each exploit ``exploit/donor`` and ``exploit/donor_step``, each replacement (a segment that failed
for good) ``replaced/donor`` and ``replaced/donor_step`` (0, no donor: restarted fresh); the summary
counts ``pbt/exploits`` and ``pbt/replacements`` and says the last of each. ``WANDB_MODE=offline``
writes the runs under ``WANDB_DIR`` (sync them later with ``wandb sync``); ``WANDB_ENTITY`` and the API key come
from the environment, as for any W&B run. Runs stay open on the sending worker until the
experiment ends; a worker that takes over later resumes them by id (online; offline it writes a
second directory for the same run id, which ``wandb sync`` adds to it).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import wandb

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.model import Lineage
from pbt_mq.worker.tracking import TrackerDown, donor_number, in_words, objectives, source


class WandbTracker:
    name = "wandb"

    def __init__(self, project: str, cfg: Experiment, experiment: str) -> None:
        self.project, self.cfg, self.exp = project, cfg, experiment
        self.runs: dict[str, Any] = {}
        self.first: dict[str, dict[str, Any]] = {}

    def new_id(self) -> str:
        return secrets.token_hex(4)  # W&B ids: 8 lowercase letters or digits, chosen by the client

    def open(self, member: str, run_id: str | None) -> str:
        assert run_id is not None  # claimed first (new_id)
        if run_id in self.runs:
            return run_id
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
        name = f"{self.exp}/{member}"
        metric, mode = objectives(self.cfg)
        try:
            run = wandb.init(project=self.project, id=run_id, name=name, group=self.exp, reinit="create_new",
                             resume=None if offline else "allow", dir=os.environ.get("WANDB_DIR") or None,
                             config={"pbt/run": name, "pbt/experiment": self.exp, "pbt/member": member,
                                     "pbt/trainable": self.cfg.trainable, "pbt/metric": metric, "pbt/mode": mode},
                             settings=wandb.Settings(init_timeout=60, silent=True, console="off",
                                                     x_disable_stats=True, x_disable_machine_info=True))
        except (wandb.errors.CommError, wandb.errors.UsageError, TimeoutError) as exc:
            raise TrackerDown(str(exc)[:300]) from None
        run.define_metric("pbt/step")
        run.define_metric("*", step_metric="pbt/step")
        run.summary["pbt/run"] = name
        self.runs[run_id] = run
        return run_id

    def log(self, run_id: str, step: int, metrics: dict[str, float], hparams: dict[str, Any], when_ms: int) -> None:
        run = self.runs[run_id]
        if run_id not in self.first:
            self.first[run_id] = dict(hparams)
            run.config.update({"hparams": dict(hparams)}, allow_val_change=True)
        run.log({"pbt/step": step, **metrics, **{f"hparams/{k}": v for k, v in hparams.items()
                                                  if isinstance(v, (int, float)) and not isinstance(v, bool)}})

    def exploit(self, run_id: str, rec: Lineage) -> None:
        self._lineage(run_id, rec, "exploit", "exploits")

    def replaced(self, run_id: str, rec: Lineage) -> None:
        self._lineage(run_id, rec, "replaced", "replacements")

    def _lineage(self, run_id: str, rec: Lineage, what: str, count: str) -> None:
        """``WHAT/donor_step`` (0: a fresh restart) and ``WHAT/donor`` against ``pbt/step``; the summary
        counts them and says the last one in words."""
        row: dict[str, Any] = {"pbt/step": rec.step, f"{what}/donor_step": rec.parent_step or 0}
        if (donor := donor_number(rec)) is not None:
            row[f"{what}/donor"] = donor
        run = self.runs[run_id]
        run.log(row)
        run.summary[f"pbt/last_{what}"] = source(rec)
        run.summary[f"pbt/{count}"] = int(run.summary.get(f"pbt/{count}", 0) or 0) + 1
        run.summary[f"pbt/last_{what}_words"] = in_words(rec)[:4000]

    def delete(self, run_id: str) -> None:
        """Never called: W&B ids are claimed before the run exists."""

    def close(self, run_id: str, finished: bool) -> None:
        run = self.runs.pop(run_id, None)
        if run is not None:
            run.finish(exit_code=0)


def tracker(project: str, cfg: Experiment, experiment: str) -> WandbTracker:
    return WandbTracker(project, cfg, experiment)
