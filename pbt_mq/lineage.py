"""The lineage log (``pbt:{EXP}:lineage``): one record per decision, replayable.

Each record says: member M trained segment ``seq`` from checkpoint ``start_key``
(at ``start_step``) with ``hparams`` to ``step``, wrote ``ckpt_key``, scored
``score``; then the arbiter chose ``action``. Following ``start_key`` back through
``ckpt_key``s gives the exact ancestry of any checkpoint across exploits.

This module is the one place that reads and interprets that stream: ``pbt lineage``,
``pbt plot``, ``pbt top``, ``pbt export`` and ``pbt local``'s summary all go through it.
A segment's *origin* (how its starting state came about) is read from the decision
that queued it, the record ``(member, seq - 1)``: ``init`` (fresh construction),
``continue`` (its own last checkpoint) or ``exploit`` (a donor's checkpoint, then the
mutation ``ops``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import redis

from .config import Experiment
from .keys import Keys
from .rules import decision_rng, exploit, explore


def records(r: redis.Redis, exp: str, after: str | None = None) -> list[dict[str, Any]]:
    """The decoded records, oldest first; with ``after`` (an entry id) only the newer ones."""
    out = []
    for entry_id, fields in r.xrange(Keys(exp).lineage, "-" if after is None else f"({after}", "+"):
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
    return [_typed(rec) for rec in chain]


def _typed(rec: dict[str, Any]) -> dict[str, Any]:
    """The fields every view of a segment shares, typed."""
    return {
        "member": rec["member"],
        "seq": int(rec["seq"]),
        "from_step": int(rec.get("start_step") or 0),
        "to_step": int(rec["step"]),
        "hparams": json.loads(rec["hparams"]),
        "score": float(rec["score"]),
    }


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

    A decision is a pure function of (the leaderboard it saw, member, seeded rng). Records of
    populations up to 64 carry that leaderboard, so the donor and the mutation are re-derived
    exactly; larger ones carry the counts the rule used (n, worse, better, k), which re-derive
    whether the member exploited and the mutation it got.
    """
    by_ckpt = {rec["ckpt_key"]: rec for rec in recs if rec.get("ckpt_key")}
    bad = []
    for rec in recs:
        if rec["action"] in ("continue", "exploit"):
            problem = _replay_one(cfg, rec, by_ckpt, recs)
            if problem:
                bad.append(f"{rec['member']} seq {rec['seq']}: {problem}")
    return bad


def _replay_one(cfg: Experiment, rec: dict[str, Any], by_ckpt: dict[str, Any], recs: list[dict[str, Any]]) -> str | None:
    raw = float(rec["score"])
    score = cfg.higher_is_better(raw) if math.isfinite(raw) else math.nan
    rng = decision_rng(cfg.seed, rec["member"], int(rec["seq"]))
    chosen = rec.get("parent") or rec.get("declined_donor") or None
    if "snapshot" in rec:
        snapshot = [(m, float(v)) for m, v in json.loads(rec["snapshot"])]
        donor = exploit(snapshot, rec["member"], score, cfg.exploit, rng)
        if donor != chosen:
            return f"log says donor {chosen}, replay picks {donor}"
    elif "n" in rec:
        would = _exploits_by_counts(cfg, rec, rng)
        if would != (chosen is not None):
            return f"log says donor {chosen}, the counts say {'a donor' if would else 'none'}"
    else:
        return None
    if rec["action"] != "exploit":
        return None
    source = by_ckpt.get(rec["next_start_key"])
    if source is None:
        return f"donor checkpoint {rec['next_start_key']} has no lineage record"
    hp = _explored(cfg, rec, json.loads(source["hparams"]), rng, recs)
    if hp != json.loads(rec["next_hparams"]):
        return f"log says {rec['next_hparams']}, replay gives {json.dumps(hp, sort_keys=True)}"
    return None


def _explored(cfg: Experiment, rec: dict[str, Any], hparams: dict[str, Any], rng: Any, recs: list[dict[str, Any]]) -> dict:
    """The mutation a decision made; PB2's from the lineage window its ops name (pbt_mq/pb2.py)."""
    if cfg.explore.rule == "pb2":
        from .pb2 import explore_pb2, replay_window

        seen = replay_window(recs, json.loads(rec.get("ops") or "[]"))
        if seen is not None:
            return explore_pb2(hparams, cfg, seen, rng, int(rec["parent_step"]), rec["member"])[0]
    return explore(hparams, cfg.spaces, cfg.explore, rng)[0]


def _exploits_by_counts(cfg: Experiment, rec: dict[str, Any], rng: Any) -> bool:
    """Truncation's verdict from the recorded counts (tournament needs the opponent's score)."""
    if cfg.exploit.rule == "none":
        return False
    rng.random()  # the donor draw, consumed as the arbiter did
    if cfg.exploit.rule == "tournament":
        return rec.get("parent") not in (None, "")
    worse, better, k = int(rec["worse"]), int(rec["better"]), int(rec["k"])
    return worse < k and min(k, better) > 0


# ---------------------------------------------------------------- interpretation (pbt lineage/plot/top/export)


Key = tuple[str, int]  # (member, seq)


class NoCheckpoint(LookupError):
    """The member asked for has no checkpoint (yet), or no member has a score."""


def by_seq(recs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    return {(rec["member"], int(rec["seq"])): rec for rec in recs}


def by_checkpoint(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rec["ckpt_key"]: rec for rec in recs if rec.get("ckpt_key")}


def origin(rec: dict[str, Any], seqs: dict[Key, dict[str, Any]], ckpts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How the state a segment started from came about, read from the decision that queued it."""
    start_key = rec.get("start_key") or ""
    if not start_key:
        return {"kind": "init", "member": rec["member"], "step": 0, "ckpt_key": "", "ops": []}
    decision = seqs.get((rec["member"], int(rec["seq"]) - 1))
    source = ckpts.get(start_key)
    exploited = decision is not None and decision["action"] == "exploit"
    # A worker that found the queued start checkpoint corrupt or gone started from another one.
    recovered = decision is not None and decision.get("next_start_key") not in (None, "", start_key)
    out: dict[str, Any] = {
        "kind": "recovered" if recovered else "exploit" if exploited else "continue",
        "member": source["member"] if source else (decision or {}).get("parent") or "?",
        "step": int(rec.get("start_step") or 0),
        "ckpt_key": start_key,
        "score": float(source["score"]) if source else None,
        "ops": [],
    }
    if exploited and not recovered:
        out["ops"] = json.loads(decision.get("ops") or "[]")
        out["replaced"] = {"step": int(decision["step"]), "score": float(decision["score"])}
    return out


def segment(rec: dict[str, Any], seqs: dict[Key, dict[str, Any]], ckpts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One lineage record as a plain, typed segment with its origin."""
    return {
        **_typed(rec),
        "ckpt_key": rec.get("ckpt_key", ""),
        "worker": rec.get("worker", ""),
        "start": origin(rec, seqs, ckpts),
    }


def explain(recs: list[dict[str, Any]], ckpt_key: str) -> list[dict[str, Any]]:
    """The segments that produced ``ckpt_key``, oldest first, each with where its start came from."""
    seqs, ckpts = by_seq(recs), by_checkpoint(recs)
    return [segment(rec, seqs, ckpts) for rec in ancestry(recs, ckpt_key)]


def phases(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hyperparameter schedule proper: consecutive segments with equal values merged."""
    out: list[dict[str, Any]] = []
    for s in segments:
        if out and out[-1]["hparams"] == s["hparams"] and out[-1]["to_step"] == s["from_step"]:
            out[-1]["to_step"] = s["to_step"]
        else:
            out.append({"from_step": s["from_step"], "to_step": s["to_step"], "hparams": dict(s["hparams"])})
    return out


def exploits(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every exploit decision: who was replaced (at which step and score) by whose checkpoint."""
    ckpts = by_checkpoint(recs)
    out = []
    for rec in recs:
        if rec["action"] != "exploit":
            continue
        donor = ckpts.get(rec.get("next_start_key") or "")
        out.append(
            {
                "member": rec["member"],
                "seq": int(rec["seq"]),
                "step": int(rec["step"]),
                "score": float(rec["score"]),
                "parent": rec["parent"],
                "parent_step": int(rec["parent_step"] or 0),
                "parent_score": float(donor["score"]) if donor else None,
                "ops": json.loads(rec.get("ops") or "[]"),
                "hparams": json.loads(rec.get("next_hparams") or "{}"),
            }
        )
    return out


def histories(recs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every member's own segments in order (its score and hyperparameter curves)."""
    seqs, ckpts = by_seq(recs), by_checkpoint(recs)
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(recs, key=lambda x: (x["member"], int(x["seq"]))):
        out.setdefault(rec["member"], []).append(segment(rec, seqs, ckpts))
    return out


def format_lineage(segments: list[dict[str, Any]], metric: str) -> str:
    """A member's ancestry, oldest first: every segment, every inheritance and mutation."""
    lines = []
    for s in segments:
        st = s["start"]
        if st["kind"] == "exploit":
            was = st["replaced"]
            lines.append(
                f"    -> {s['member']} ({metric}={was['score']:.4g} at step {was['step']}) inherits {st['member']}'s"
                f" checkpoint at step {st['step']} ({metric}={_fmt(st.get('score'))}), mutates: "
                + ("; ".join(st["ops"]) or "nothing")
            )
        hp = " ".join(f"{k}={_fmt(v)}" for k, v in sorted(s["hparams"].items()))
        tail = {"init": "  (fresh start)", "recovered": f"  (recovered from {st['member']}'s checkpoint)"}.get(st["kind"], "")
        lines.append(f"  steps {s['from_step']:>6}-{s['to_step']:<6} {s['member']:<6} {metric}={s['score']:<10.6g} {hp}{tail}")
    return "\n".join(lines)


def format_phases(ph: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  steps {p['from_step']:>6}-{p['to_step']:<6} "
        + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(p["hparams"].items()))
        for p in ph
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def target(r: redis.Redis, exp: str, member: str | None = None) -> dict[str, Any]:
    """The checkpoint whose lineage to trace: ``member``'s latest, else the leaderboard's best."""
    k = Keys(exp)
    if member is None:
        top = r.zrevrange(k.scores, 0, 0)
        if not top:
            raise NoCheckpoint(f"{exp}: no member has a finite score yet, so there is no best checkpoint")
        member = top[0].decode()
    fields = ("ckpt_key", "ckpt_sha256", "ckpt_size", "score", "scored_step")
    h = dict(zip(fields, (v.decode() if v else "" for v in r.hmget(k.member(member), *fields)), strict=True))
    if not h["ckpt_key"]:
        raise NoCheckpoint(f"{exp}: member {member!r} has no checkpoint (yet)")
    return {
        "member": member,
        "step": int(h["scored_step"] or 0),
        "score": float(h["score"]),
        "ckpt_key": h["ckpt_key"],
        "sha256": h["ckpt_sha256"],
        "size": int(h["ckpt_size"] or 0),
    }
