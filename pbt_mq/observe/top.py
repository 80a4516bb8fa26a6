"""``pbt top EXP``: a live terminal view of one experiment (rich), redrawn in place.

Per member: state, worker, step, score and its trend, hyperparameters, last exploit
(from whom, at which step). Above: a population summary and events/s; below: the
fleet's workers, with those whose heartbeat is stale (older than ``--stale-s``) or
gone (key expired) flagged, and any member running on one flagged too.

It redraws with rich's ``Live`` on the alternate screen (like ``top``): the cursor is
moved, not the screen cleared, so there is no flicker, and it is only ANSI text, so it
works over SSH. A frame reads the member hashes and only the lineage entries added
since the previous frame, so a long run costs no more per frame than a short one.
``--once`` prints one frame (plain text when stdout is not a terminal) and exits.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import WORKERS, Keys, worker_key
from pbt_mq.core.model import Action, Heartbeat, Meta
from pbt_mq.core.terminal import safe_tree
from pbt_mq.state.experiment import status
from pbt_mq.state.lineage import records

SPARK = "▁▂▃▄▅▆▇█"
RATE_WINDOW_MS = 10_000
EVENTS_WINDOW_MS = 3_000  # decided events stay in Redis only seconds (PBT_EVENTS_RETENTION_S, 5 s)
WORKER_MEMORY_MS = 600_000  # workers not seen for this long are left out of the table
STATE_STYLE = {"running": "green", "queued": "yellow", "ready": "cyan", "done": "blue", "failed": "bold red"}


@dataclass
class Follower:
    """Keeps per-member history from the lineage stream, reading only new entries each frame."""

    r: Any
    exp: str
    trend_len: int = 16
    last_id: str | None = None
    scores: dict[str, deque[float]] = field(default_factory=dict)
    last_exploit: dict[str, dict[str, Any]] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)

    def poll(self) -> None:
        for rec in records(self.r, self.exp, after=self.last_id):
            self.last_id = rec.id
            action = str(rec.action) if rec.action else "?"
            self.actions[action] = self.actions.get(action, 0) + 1
            if rec.action in (Action.FAILED, Action.REPLACED) and not rec.ckpt_key:
                continue  # a failure record carries no score
            self.scores.setdefault(rec.member, deque(maxlen=self.trend_len)).append(rec.score)
            if rec.action is Action.EXPLOIT:
                self.last_exploit[rec.member] = {"parent": rec.parent, "step": rec.step,
                                                 "parent_step": rec.parent_step or 0}


def sparkline(xs: list[float], higher_is_better: bool = True) -> str:
    """Scores as block characters, scaled to their own range; a flat series is a flat line."""
    finite = [x for x in xs if x == x and abs(x) != float("inf")]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for x in xs:
        if x not in finite:
            out.append("·")
            continue
        frac = (x - lo) / span if span > 0 else 0.5
        out.append(SPARK[round((frac if higher_is_better else 1 - frac) * (len(SPARK) - 1))])
    return "".join(out)


def rate(r: Any, stream: str, now: int, since_ms: int, window_ms: int = RATE_WINDOW_MS) -> float:
    """Entries per second over the last ``window_ms`` (or since ``since_ms`` if later)."""
    start = max(now - window_ms, since_ms)
    n = len(r.xrange(stream, f"{start}-0", "+", count=100_000))
    return n / max((now - start) / 1000, 1.0)


def workers(r: Any, now: int, stale_s: float) -> list[dict[str, Any]]:
    """The fleet as its heartbeats show it: alive, stale (late) or gone (key expired)."""
    seen = r.zrangebyscore(WORKERS, now - WORKER_MEMORY_MS, "+inf", withscores=True)
    pipe = r.pipeline(transaction=False)
    for wid, _ in seen:
        pipe.hgetall(worker_key(wid.decode()))
    out = []
    for (wid, beat), h in zip(seen, pipe.execute(), strict=True):
        rec = Heartbeat.decode(h)  # typed; a field written by hand takes its default (rec.problems says which)
        present = {a.decode(errors="replace") for a in h}
        d = {name: getattr(rec, name) for name in Heartbeat.spec() if name in present}
        age = (now - (rec.beat_ms or int(beat))) / 1000
        health = "gone" if not h else ("stale" if age > stale_s else "ok")
        out.append({"id": wid.decode(errors="replace"), "health": health, "age_s": age, **d,
                    **({"problems": list(rec.problems)} if rec.problems else {})})
    return out


def snapshot(r: Any, exp: str, follower: Follower, stale_s: float) -> dict[str, Any]:
    """Everything one frame shows, as plain data (the tests read this too)."""
    follower.poll()
    st = status(r, exp)
    now = now_ms()
    k = Keys(exp)
    meta = Meta.read(r, k.meta, "created_ms", "done_ms")
    created, done = meta.created_ms or now, meta.done_ms
    fleet = workers(r, now, stale_s)
    health = {w["id"]: w["health"] for w in fleet}
    for m in st["members"]:
        m["trend"] = list(follower.scores.get(m["id"], []))
        m["last_exploit"] = follower.last_exploit.get(m["id"])
        m["worker_health"] = health.get(m["worker"], "gone") if m["worker"] else ""
        m["flag"] = m["state"] == "running" and m["worker_health"] != "ok"
    return safe_tree({  # user-written strings (values, ids, errors) are shown escaped, never interpreted
        **st,
        "elapsed_s": ((done or now) - created) / 1000,
        "events_per_s": rate(r, k.events, now, created, EVENTS_WINDOW_MS),
        "decisions_per_s": rate(r, k.lineage, now, created),
        "actions": dict(follower.actions),
        "workers": fleet,
        "stale_s": stale_s,
    })


def render(snap: dict[str, Any]) -> Group:
    return Group(header(snap), members_table(snap), workers_table(snap))


def header(snap: dict[str, Any]) -> Text:
    t = Text()
    t.append(f"{snap['experiment']}", style="bold")
    t.append(f"  {snap['state']}", style="green" if snap["state"] == "running" else "blue")
    if snap.get("reason"):
        t.append(f" ({snap['reason']})")
    t.append(f"  {snap['elapsed_s']:.0f}s  {snap['metric']} ({snap['mode']})\n")
    best = snap.get("best")
    t.append("best: " + (f"{best['member']} {snap['metric']}={best['score']:.6g} at step {best['step']}" if best else "-"))
    scores = sorted(m["score"] for m in snap["members"] if m["score"] is not None)
    if scores:
        t.append(f"   population {snap['metric']}: min {scores[0]:.4g}  median {scores[len(scores) // 2]:.4g}"
                 f"  max {scores[-1]:.4g}")
    counts: dict[str, int] = {}
    for m in snap["members"]:
        counts[m["state"]] = counts.get(m["state"], 0) + 1
    t.append(f"\nmembers {snap['population']}: " + "  ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    a = snap["actions"]
    t.append(f"   decisions {sum(a.values())} (exploit {a.get('exploit', 0)}, continue {a.get('continue', 0)})")
    t.append(f"   events/s {snap['events_per_s']:.1f}  decisions/s {snap['decisions_per_s']:.1f}")
    return t


def members_table(snap: dict[str, Any]) -> Table:
    best = (snap.get("best") or {}).get("member")
    tab = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("member", "state", "worker", "step", snap["metric"], "trend", "hparams", "last exploit"):
        tab.add_column(col, justify="right" if col in ("step", snap["metric"]) else "left", no_wrap=col != "hparams")
    up = snap["mode"] == "max"
    for m in snap["members"]:
        worker = Text(m["worker"] or "-")
        if m["flag"]:
            worker.append(f" ({m['worker_health'].upper()})", style="bold red")
        last = m["last_exploit"]
        tab.add_row(
            Text(m["id"] + (" *" if m["id"] == best else ""), style="bold" if m["id"] == best else ""),
            Text(m["state"], style=STATE_STYLE.get(m["state"], "")),
            worker,
            str(m["step"]),
            "-" if m["score"] is None else f"{m['score']:.6g}",
            trend_text(m["trend"], up),
            Text(" ".join(f"{k}={_short(v)}" for k, v in sorted(m["hparams"].items()))),
            Text(exploit_text(last)),
        )
    return tab


def exploit_text(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    moved = "" if last["step"] == last["parent_step"] else f" (was at step {last['step']})"
    return f"from {last['parent']} at step {last['parent_step']}{moved}"


def trend_text(xs: list[float], up: bool) -> Text:
    if len(xs) < 2:
        return Text(sparkline(xs, up))
    better = (xs[-1] > xs[-2]) if up else (xs[-1] < xs[-2])
    worse = (xs[-1] < xs[-2]) if up else (xs[-1] > xs[-2])
    arrow, style = ("↑", "green") if better else (("↓", "red") if worse else ("→", ""))
    t = Text(sparkline(xs, up))
    t.append(" " + arrow, style=style)
    return t


def workers_table(snap: dict[str, Any]) -> Table:
    tab = Table(box=None, pad_edge=False, header_style="bold", title_justify="left",
                title=f"workers (stale after {snap['stale_s']:g}s without a heartbeat)")
    for col in ("worker", "health", "last beat", "device", "segment", "segments", "warm/cached/cold"):
        tab.add_column(col, no_wrap=True)
    for w in snap["workers"]:
        style = {"ok": "green", "stale": "bold yellow", "gone": "bold red"}[w["health"]]
        tab.add_row(
            Text(w["id"]), Text(w["health"].upper() if w["health"] != "ok" else "ok", style=style),
            f"{w['age_s']:.1f}s ago", Text(str(w.get("device", "-"))), Text(str(w.get("current") or "-")),
            str(w.get("segments", "-")), f"{w.get('warm', '-')}/{w.get('cached', '-')}/{w.get('cold', '-')}",
        )
    return tab


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def live(r: Any, exp: str, follower: Follower, console: Console, interval: float, stale_s: float) -> int:
    """Redraw until Ctrl-C; the last frame stays on screen after an experiment ends."""
    snap = snapshot(r, exp, follower, stale_s)
    with Live(render(snap), console=console, screen=console.is_terminal, auto_refresh=False) as view:
        try:
            while True:
                time.sleep(interval)
                try:
                    snap = snapshot(r, exp, follower, stale_s)
                except redis.RedisError as exc:  # Redis restarting: keep the last frame, say so
                    view.update(Group(render(snap), Text(f"redis: {exc}", style="bold red")), refresh=True)
                    continue
                view.update(render(snap), refresh=True)
        except KeyboardInterrupt:
            pass
    console.print(render(snap))
    return 0
