"""``pbt stats EXP``: where an experiment's time went, from its lineage (each record carries its
segment's timings; the events stream keeps an event only seconds after its decision)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from pbt_mq.core.ids import entry_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Lineage, Meta
from pbt_mq.core.protocol import NO_DOWNLOAD, PHASES, STARTS, ProtocolError, ReadyEvent, start_kind
from pbt_mq.state.lineage import records


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def segment_timings(r: Any, exp: str, lineage: list[Lineage]) -> list[dict[str, float]]:
    """Each decided segment's timings: from its lineage record (archived or not), or for records
    written before lineage carried them, from its event if the stream still holds it."""
    out = [rec.timings for rec in lineage if rec.timings is not None]
    timed = {(rec.member, rec.seq) for rec in lineage if rec.timings is not None}
    for _, fields in r.xrange(Keys(exp).events, "-", "+"):
        try:
            ev = ReadyEvent.decode(fields.get(b"msg"))
        except ProtocolError:
            continue
        if (ev.member, ev.seq) not in timed:
            timed.add((ev.member, ev.seq))
            out.append(ev.timings_s)
    return out


def experiment_stats(r: Any, exp: str) -> dict[str, Any]:
    lineage = records(r, exp)
    evs = segment_timings(r, exp, lineage)
    actions = Counter(str(rec.action) for rec in lineage)
    waits = [t["wait"] for t in evs if "wait" in t]
    phases = {p: sum(t.get(p, 0.0) for t in evs) for p in PHASES}
    busy = sum(phases.values())
    kinds = Counter(start_kind(t) for t in evs)
    span_s = 0.0
    if len(lineage) > 1:
        span_s = (entry_ms(lineage[-1].id) - entry_ms(lineage[0].id)) / 1000
    idle = _idle_fraction(r, exp, lineage, busy)
    continuing = kinds["warm"] + kinds["cached"] + kinds["cold"]
    no_download = sum(kinds[k] for k in NO_DOWNLOAD)
    return {
        "segments": len(evs),
        "decisions": len(lineage),
        "actions": dict(actions),
        "decisions_per_s": len(lineage) / span_s if span_s > 0 else None,
        "ready_to_start_s": {
            "p50": percentile(waits, 0.5),
            "p99": percentile(waits, 0.99),
            "mean": statistics.fmean(waits) if waits else None,
            "n": len(waits),
        },
        "phases_s": phases,
        "train_fraction_of_segment": phases["train"] / busy if busy else None,
        "starts": dict(kinds),
        "warm_fraction": kinds["warm"] / continuing if continuing else None,
        "no_download_fraction": no_download / continuing if continuing else None,
        "workers": len({rec.worker for rec in lineage if rec.worker}),
        "worker_idle_fraction": idle,
    }


def _idle_fraction(r: Any, exp: str, lineage: list[Lineage], busy_s: float) -> float | None:
    """The share of the workers' time, from launch to the last decision, not spent on this experiment's
    segments (load + train + eval + save): what synchronous rounds cost, for one. Read from the
    lineage (archived or not), since events leave Redis within seconds."""
    created = Meta.read(r, Keys(exp).meta, "created_ms").created_ms
    workers = len({rec.worker for rec in lineage if rec.worker})
    if not created or not lineage or not workers:
        return None
    span_s = (entry_ms(lineage[-1].id) - created) / 1000
    return max(0.0, 1.0 - busy_s / (workers * span_s)) if span_s > 0 else None


def format_stats(exp: str, st: dict[str, Any]) -> str:
    w = st["ready_to_start_s"]
    ph = st["phases_s"]
    dps = st["decisions_per_s"]
    lines = [
        f"{exp}: {st['segments']} segments, {st['decisions']} decisions {st['actions']}",
        f"  decisions/s over the run:         {dps:.1f}" if dps else "  decisions/s over the run:         -",
        f"  ready -> next segment start (s):  p50 {w['p50'] * 1000:.1f} ms  p99 {w['p99'] * 1000:.1f} ms  (n={w['n']})",
        "  segment time (s):                 " + "  ".join(f"{p} {v:.2f}" for p, v in ph.items()),
        f"  starts: {_starts(st['starts'])}",
        f"  continuing segments that started without a download: {_share(st.get('no_download_fraction'))}"
        " (warm: the live model; cached: this worker's memory)",
    ]
    if st.get("worker_idle_fraction") is not None:
        lines.append(f"  workers: {st['workers']}, idle {st['worker_idle_fraction']:.1%} of the time from launch to the "
                     "last event (waiting for work, e.g. for a synchronous round)")
    return "\n".join(lines)


def _starts(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {kinds[k]}" for k in (*STARTS, "?") if kinds.get(k)) or "-"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"
