"""Lineage as people read it: where each segment's state came from, the ancestry of a checkpoint,
the hyperparameter schedule, every exploit. ``pbt lineage``, ``pbt plot``, ``pbt top``,
``pbt export`` and ``pbt local``'s summary all go through here.

A segment's *origin* (how its starting state came about) is read from the decision that
queued it, the record ``(member, seq - 1)``: ``init`` (fresh construction), ``continue`` (its
own last checkpoint), ``exploit`` (a donor's checkpoint, then the mutation ``ops``) or
``recovered`` (a worker found the queued start corrupt or gone and took another).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from pbt_mq.core.ids import leaders
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, Lineage, Member
from pbt_mq.state.lineage import ancestry, by_checkpoint, typed

Key = tuple[str, int]  # (member, seq)


class NoCheckpoint(LookupError):
    """The member asked for has no checkpoint (yet), or no member has a score."""


def by_seq(recs: list[Lineage]) -> dict[Key, Lineage]:
    return {(rec.member, rec.seq): rec for rec in recs}


def origin(rec: Lineage, seqs: dict[Key, Lineage], ckpts: dict[str, Lineage]) -> dict[str, Any]:
    """How the state a segment started from came about, read from the decision that queued it."""
    decision = seqs.get((rec.member, rec.seq - 1))
    replaced = decision is not None and decision.action is Action.REPLACED
    if not rec.start_key:
        out = {"kind": "init", "member": rec.member, "step": 0, "ckpt_key": "", "ops": []}
        if replaced:  # a fresh restart after a failure: its own seed, new values
            out.update(seed=decision.seed, ops=list(decision.ops or []), failed=_failure(decision))
        return out
    source = ckpts.get(rec.start_key)
    exploited = decision is not None and decision.action in (Action.EXPLOIT, Action.REPLACED)
    # A worker that found the queued start checkpoint corrupt or gone started from another one.
    recovered = decision is not None and decision.next_start_key not in ("", rec.start_key)
    out: dict[str, Any] = {
        "kind": "recovered" if recovered else "exploit" if exploited else "continue",
        "member": source.member if source else (decision.parent if decision else "") or "?",
        "step": rec.start_step,
        "ckpt_key": rec.start_key,
        "score": source.score if source else None,
        "ops": [],
    }
    if exploited and not recovered:
        out["ops"] = list(decision.ops or [])
        out["replaced"] = {"step": decision.step, "score": decision.score}
        if replaced:
            out["kind"], out["failed"] = "replaced", _failure(decision)
    return out


def _failure(decision: Lineage) -> str:
    """The exception a replaced member's segment ended with (the last line of its traceback)."""
    lines = [line.strip() for line in (decision.reason or "").splitlines() if line.strip()]
    return lines[-1] if lines else "its segment failed"


def segment(rec: Lineage, seqs: dict[Key, Lineage], ckpts: dict[str, Lineage]) -> dict[str, Any]:
    """One lineage record as a plain, typed segment with its origin."""
    return {**typed(rec), "ckpt_key": rec.ckpt_key, "worker": rec.worker, "start": origin(rec, seqs, ckpts)}


def explain(recs: list[Lineage], ckpt_key: str) -> list[dict[str, Any]]:
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


def exploits(recs: list[Lineage]) -> list[dict[str, Any]]:
    """Every exploit decision: who was replaced (at which step and score) by whose checkpoint."""
    ckpts = by_checkpoint(recs)
    out = []
    for rec in recs:
        if rec.action is not Action.EXPLOIT:
            continue
        donor = ckpts.get(rec.next_start_key)
        out.append({
            "member": rec.member,
            "seq": rec.seq,
            "step": rec.step,
            "score": rec.score,
            "parent": rec.parent,
            "parent_step": rec.parent_step or 0,
            "parent_score": donor.score if donor else None,
            "ops": list(rec.ops or []),
            "hparams": rec.next_hparams or {},
        })
    return out


def histories(recs: list[Lineage]) -> dict[str, list[dict[str, Any]]]:
    """Every member's own segments in order (its score and hyperparameter curves)."""
    seqs, ckpts = by_seq(recs), by_checkpoint(recs)
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in sorted(recs, key=lambda x: (x.member, x.seq)):
        if rec.action in (Action.FAILED, Action.REPLACED) and not rec.ckpt_key:
            continue  # a failure record is not a segment
        out.setdefault(rec.member, []).append(segment(rec, seqs, ckpts))
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
        elif st["kind"] == "replaced" or st.get("failed"):
            took = f"{st['member']}'s checkpoint at step {st['step']}" if st["kind"] == "replaced" else \
                f"a fresh start (seed {st.get('seed')})"
            lines.append(f"    -> {s['member']}'s segment failed ({st['failed']}): replaced by {took}, "
                         + ("; ".join(st["ops"]) or "nothing"))
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


def target(r: Any, exp: str, member: str | None = None) -> dict[str, Any]:
    """The checkpoint whose lineage to trace: ``member``'s latest, else the leaderboard's best."""
    k = Keys(exp)
    if member is None:
        top = leaders(r.zrevrange(k.scores, 0, 15, withscores=True))
        if not top:
            raise NoCheckpoint(f"{exp}: no member has a finite score yet, so there is no best checkpoint")
        member = top[0][0]
    h = Member.read(r, k.member(member), "ckpt_key", "ckpt_sha256", "ckpt_size", "score", "scored_step")
    if not h.ckpt_key:
        raise NoCheckpoint(f"{exp}: member {member!r} has no checkpoint (yet)")
    return {
        "member": member,
        "step": h.scored_step or 0,
        "score": h.score if h.score is not None else math.nan,
        "ckpt_key": h.ckpt_key,
        "sha256": h.ckpt_sha256,
        "size": h.ckpt_size or 0,
    }


def record_json(rec: Lineage) -> dict[str, Any]:
    """A decision record as plain data (``pbt lineage --records``): its entry id and every field set."""
    out: dict[str, Any] = {"id": rec.id}
    for name in Lineage.spec():
        value = getattr(rec, name)
        if value is not None:
            out[name] = str(value) if isinstance(value, Enum) else value
    return out
