"""The lineage log (``pbt:{EXP}:lineage``): one record per decision, replayable.

Each record says: member M trained segment ``seq`` from checkpoint ``start_key``
(at ``start_step``) with ``hparams`` to ``step``, wrote ``ckpt_key``, scored
``score``; then the arbiter chose ``action``. Following ``start_key`` back through
``ckpt_key``s gives the exact ancestry of any checkpoint across exploits.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from .keys import Keys


def records(r: redis.Redis, exp: str) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in r.xrange(Keys(exp).lineage, "-", "+"):
        rec = {a.decode(): b.decode() for a, b in fields.items()}
        rec["id"] = entry_id.decode()
        out.append(rec)
    return out


def ancestry(recs: list[dict[str, Any]], ckpt_key: str) -> list[dict[str, Any]]:
    """The segments that produced ``ckpt_key``, oldest first."""
    by_ckpt = {rec["ckpt_key"]: rec for rec in recs if rec.get("ckpt_key")}
    chain: list[dict[str, Any]] = []
    cur = by_ckpt.get(ckpt_key)
    seen: set[str] = set()
    while cur is not None and cur["ckpt_key"] not in seen:
        seen.add(cur["ckpt_key"])
        chain.append(cur)
        cur = by_ckpt.get(cur.get("start_key") or "")
    return chain[::-1]


def schedule(chain: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hyperparameter schedule of a chain: which values were used from which step."""
    return [
        {
            "member": rec["member"],
            "seq": int(rec["seq"]),
            "from_step": int(rec.get("start_step") or 0),
            "to_step": int(rec["step"]),
            "hparams": json.loads(rec["hparams"]),
            "score": float(rec["score"]),
        }
        for rec in chain
    ]


def format_schedule(sched: list[dict[str, Any]]) -> str:
    lines = []
    prev_member = None
    for s in sched:
        hp = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(s["hparams"].items()))
        tag = "" if prev_member in (None, s["member"]) else f"  <- copied {prev_member}'s weights"
        lines.append(f"  steps {s['from_step']:>6}-{s['to_step']:<6} {s['member']}  {hp}  score={s['score']:.4g}{tag}")
        prev_member = s["member"]
    return "\n".join(lines)
