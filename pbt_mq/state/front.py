"""Several metrics (multi-objective PBT): the Pareto front of the members' latest values, not one "best".

Read from ``pbt:{EXP}:scores:vectors`` (each member's latest finite metric values, kept by the arbiters:
``control.pyrule``); what ``pbt status``, ``pbt plot``, ``pbt export --front`` and ``pbt local``'s
summary show.
"""

from __future__ import annotations

import json
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Member
from pbt_mq.rules.pareto import front, oriented


def latest_values(r: Any, exp: str) -> dict[str, list[float]]:
    """member -> its latest metric values, in the order of the experiment's metrics (finite ones only)."""
    k = Keys(exp)
    return {m.decode(): json.loads(v) for m, v in r.hgetall(Keys.vectors(k.scores)).items()}


def pareto_front(r: Any, cfg: Experiment, exp: str) -> list[dict[str, Any]]:
    """The non-dominated members: member, values by metric, the step they were scored at; best first on
    the first metric."""
    values = latest_values(r, exp)
    members = front({m: oriented(v, cfg.modes) for m, v in values.items()})
    k = Keys(exp)
    pipe = r.pipeline(transaction=False)
    for m in members:
        pipe.hmget(k.member(m), "scored_step")
    steps = [Member.pick(("scored_step",), row).scored_step for row in pipe.execute()]
    out = [{"member": m, "values": dict(zip(cfg.metrics, values[m], strict=True)), "step": step}
           for m, step in zip(members, steps, strict=True)]
    return sorted(out, key=lambda row: oriented(list(row["values"].values()), cfg.modes), reverse=True)


def format_front(rows: list[dict[str, Any]], population: int) -> list[str]:
    lines = [f"Pareto front: {len(rows)} of {population} members (non-dominated on their latest values)"]
    for row in rows:
        vals = "  ".join(f"{name}={v:.6g}" for name, v in row["values"].items())
        lines.append(f"  {row['member']}  {vals}  (step {row['step']})")
    return lines
