"""``pbt status`` and ``pbt list``: an experiment and its members as a table; every experiment in a line."""

from __future__ import annotations

from typing import Any

import redis

from pbt_mq.core.ids import experiment_ids, leaders
from pbt_mq.core.keys import EXPERIMENTS, Keys
from pbt_mq.core.model import Lineage, Member, Meta
from pbt_mq.state.front import format_front

_META = ("state", "reason", "metric", "mode")


def experiment_rows(r: Any) -> list[dict[str, Any]]:
    """Every experiment, oldest first: id, state, reason, metric and its best member (member,
    score in the metric's units, step; None without a finite score). Two pipelined reads in all."""
    ids = experiment_ids(r.zrange(EXPERIMENTS, 0, -1))
    pipe = r.pipeline(transaction=False)
    for e in ids:
        pipe.hmget(Keys(e).meta, *Meta.names(*_META))
        pipe.zrevrange(Keys(e).scores, 0, 15, withscores=True)
    replies = pipe.execute(raise_on_error=False)  # a key of another type (redis-cli) spoils its row, not the list
    rows = []
    for i, e in enumerate(ids):
        if isinstance(replies[2 * i], redis.ResponseError):
            rows.append({"id": e, "state": "?", "reason": f"unreadable: {Keys(e).meta}: {replies[2 * i]}",
                         "metric": "", "member": None, "score": None, "step": None, "multi": False})
            continue
        meta = Meta.pick(_META, replies[2 * i])
        top = [] if isinstance(replies[2 * i + 1], redis.ResponseError) else leaders(replies[2 * i + 1])
        if meta.state is None and not meta.metric:
            continue  # launched this instant: its meta is not written yet
        member = top[0][0] if top else None
        first_mode = meta.mode.split(",")[0]  # several metrics: "max,min"; the leaderboard holds the first one
        score = (top[0][1] if first_mode != "min" else -top[0][1]) if top else None
        rows.append({"id": e, "state": str(meta.state) if meta.state else "?", "reason": meta.reason,
                     "metric": meta.metric.split(",")[0], "member": member, "score": score, "step": None,
                     "multi": "," in meta.metric})
    pipe = r.pipeline(transaction=False)
    scored = [row for row in rows if row["member"]]
    for row in scored:
        pipe.hmget(Keys(row["id"]).member(row["member"]), *Member.names("scored_step"))
    for row, reply in zip(scored, pipe.execute(raise_on_error=False), strict=True):
        row["step"] = None if isinstance(reply, redis.ResponseError) else Member.pick(("scored_step",), reply).scored_step
    return rows


def format_status(st: dict[str, Any]) -> str:
    lines = [f"{st['experiment']}  state={st['state']}  finished={st['finished']}/{st['population']}"]
    if st.get("reason"):
        lines[0] += f"  ({st['reason']})"
    best = st.get("best")
    if best:
        lines.append(f"best: {best['member']} {st['metric']}={best['score']:.6g} at step {best['step']}")
    if st.get("front") is not None:
        lines += format_front(st["front"], st["population"])
    rnd = st.get("round")
    if rnd:
        lines.append(f"synchronous round at ready point {rnd['at']}: waiting {' '.join(rnd['waiting'])}; "
                     f"still to report: {' '.join(rnd['behind']) or '-'}")
    if st.get("tracking_problem"):
        lines.append(f"tracking: {st['tracking_problem']}")
    for arbiter, why in sorted((st.get("refused") or {}).items()):
        lines.append(f"arbiter {arbiter} cannot decide it: {why}")
    lines.append(f"{'member':<8} {'state':<8} {'step':>7} {st['metric']:>12}  {'worker':<24} hparams")
    for m in st["members"]:
        score = "-" if m["score"] is None else f"{m['score']:.6g}"
        hp = " ".join(f"{k}={_short(v)}" for k, v in sorted(m["hparams"].items()))
        lines.append(f"{m['id']:<8} {m['state']:<8} {m['step']:>7} {score:>12}  {m['worker'][:24]:<24} {hp}")
    for m in st["members"]:
        if m["state"] == "failed":
            lines.append(f"{m['id']} failed: {last_line(m.get('error') or '')}; its traceback: "
                         f"pbt status {st['experiment']} {m['id']}")
        elif m["state"] == "done" and m.get("error") and "after its run was done" in m["error"]:
            lines.append(f"{m['id']} is done, but {m['error'][:300]}")
    return "\n".join(lines)


def format_member(st: dict[str, Any], member: str, failures: list[Lineage]) -> str:
    """``pbt status EXP MEMBER``: one member's state, and every failure of its segments with its traceback."""
    m = next(row for row in st["members"] if row["id"] == member)
    score = "-" if m["score"] is None else f"{m['score']:.6g}"
    lines = [f"{st['experiment']} {member}: {m['state']} at step {m['step']}, {st['metric']}={score}, "
             f"worker {m['worker'] or '-'}",
             "hparams: " + (" ".join(f"{k}={_short(v)}" for k, v in sorted(m["hparams"].items())) or "-")]
    if m.get("reason"):
        lines.append(f"reason: {m['reason']}")
    for rec in failures:
        lines.append(f"segment seq {rec.seq} from step {rec.start_step}: {rec.action}"
                     + (f" (restarted from {rec.parent} at step {rec.parent_step})" if rec.parent else ""))
        lines += ["  " + line for line in (rec.reason or "(no reason recorded)").splitlines()]
    if m.get("error") and not any(m["error"].strip() == (rec.reason or "").strip() for rec in failures):
        lines.append("last error:")
        lines += ["  " + line for line in m["error"].splitlines()]
    if len(lines) == 2:
        lines.append("no failure recorded")
    return "\n".join(lines)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no reason recorded)"


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
