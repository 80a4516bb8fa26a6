"""The lineage log (``pbt:{EXP}:lineage``): one record per decision, replayable.

Each record says: member M trained segment ``seq`` from checkpoint ``start_key``
(at ``start_step``) with ``hparams`` to ``step``, wrote ``ckpt_key``, scored
``score``; then the arbiter chose ``action``. Following ``start_key`` back through
``ckpt_key``s gives the exact ancestry of any checkpoint across exploits.
"""

from __future__ import annotations

import json
import math
from typing import Any

import redis

from .config import Experiment
from .keys import Keys
from .rules import decision_rng, exploit, explore


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


def replay_decisions(cfg: Experiment, recs: list[dict[str, Any]]) -> list[str]:
    """Re-derive every recorded exploit/explore decision from the log; return the mismatches.

    A decision is a pure function of (the leaderboard it saw, member, seeded rng), and the
    record carries that leaderboard, so the log alone reproduces it.
    """
    by_ckpt = {rec["ckpt_key"]: rec for rec in recs if rec.get("ckpt_key")}
    bad = []
    for rec in recs:
        if rec["action"] not in ("continue", "exploit") or "snapshot" not in rec:
            continue
        snapshot = [(m, float(s)) for m, s in json.loads(rec["snapshot"])]
        raw = float(rec["score"])
        score = cfg.higher_is_better(raw) if math.isfinite(raw) else math.nan
        rng = decision_rng(cfg.seed, rec["member"], int(rec["seq"]))
        donor = exploit(snapshot, rec["member"], score, cfg.exploit, rng)
        where = f"{rec['member']} seq {rec['seq']}"
        if rec["action"] == "continue":
            if donor is not None and donor != rec.get("declined_donor"):
                bad.append(f"{where}: log says continue, replay picks donor {donor}")
            continue
        if donor != rec["parent"]:
            bad.append(f"{where}: log says donor {rec['parent']}, replay picks {donor}")
            continue
        source = by_ckpt.get(rec["next_start_key"])
        if source is None:
            bad.append(f"{where}: donor checkpoint {rec['next_start_key']} has no lineage record")
            continue
        hp, _ = explore(json.loads(source["hparams"]), cfg.spaces, cfg.explore, rng)
        if hp != json.loads(rec["next_hparams"]):
            bad.append(f"{where}: log says {rec['next_hparams']}, replay gives {json.dumps(hp, sort_keys=True)}")
    return bad

