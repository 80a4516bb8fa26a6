"""``pbt bench --fleet``: real workers and an arbiter on this machine, timed from the event log.

Each run launches an experiment of ``BenchModel`` (a state of the chosen size whose training
only sleeps) on a private redis-server with ``pbt local``'s fleet, waits for it, and reads
back what the workers reported per segment (load, train, eval, save) and when they
published. From that:

* user time: the fraction of each worker's wall time (first segment start to last event)
  spent in train() and evaluate(); the rest is pbt-mq's (checkpoints, queueing, decisions);
* warm: of the segments that continued a member, the fraction served from the live model;
  no download: warm, or loaded from the checkpoints the worker holds in memory (``worker.cache``);
* bytes per exploit: what the worker downloaded to start from a donor (the arbiter moves
  none: it hands over a checkpoint reference, and the store makes no copy; none when the
  worker holds the donor's checkpoint);
* segments/s: the whole fleet's rate, end to end;
* overhead: pbt-mq's time per segment on a worker besides load, train, evaluate and save (taking
  the job, claiming it, publishing), as the workers measure it (their heartbeats' ``overhead_ms``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbt_mq.broker.connect import connect
from pbt_mq.config.parse import parse
from pbt_mq.core.ids import entry_ms
from pbt_mq.core.keys import WORKERS, Keys, worker_key
from pbt_mq.core.model import Action, ExperimentState, Heartbeat, Meta
from pbt_mq.core.protocol import NO_DOWNLOAD, PHASES, ReadyEvent, start_kind
from pbt_mq.state.experiment import launch
from pbt_mq.state.lineage import records
from pbt_mq.tools.fleet import fleet


def bench_experiment(population: int, segments: int, segment_s: float, model_mb: float,
                     overlap: bool = False) -> dict[str, Any]:
    return {
        "worker": {"overlap_upload": overlap},
        "name": "bench-fleet", "trainable": "pbt_mq.tools.bench.trainable:BenchModel", "metric": "score",
        "seed": 0, "population": {"size": population}, "ready": {"steps": 1}, "stop": {"steps": segments},
        "trainable_args": {"model_mb": model_mb, "step_s": segment_s},
        "hparams": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
        "exploit": {"rule": "truncation", "quantile": 0.25},
    }


def measure_fleet(workers: int, population: int, segments: int, segment_s: float, model_mb: float,
                  overlap: bool = False, timeout_s: float = 600.0) -> dict[str, Any]:
    cfg = parse(bench_experiment(population, segments, segment_s, model_mb, overlap))
    with tempfile.TemporaryDirectory(prefix="pbt-bench-fleet-") as tmp:
        wd = Path(tmp)
        (wd / "logs").mkdir()
        with _env("PBT_EVENTS_RETENTION_S", "-1"), fleet(wd, workers) as (url, _procs):  # events read back below
            r = connect(url)
            _warm_up(r, wd, workers)
            exp = launch(r, cfg, f"file://{wd / 'checkpoints'}")
            deadline = time.monotonic() + timeout_s
            while (meta := Meta.read(r, Keys(exp).meta, "state", "reason")).state is ExperimentState.RUNNING:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bench experiment {exp} did not finish in {timeout_s:g} s")
                time.sleep(0.1)
            if meta.state is not ExperimentState.DONE:
                raise RuntimeError(f"bench experiment {exp} ended {meta.reason!r}")
            row = analyse(r, exp)
            row["overhead_ms"] = _overhead_ms(r, workers)
    row.update(workers=workers, population=population, segment_s=segment_s, model_mb=model_mb,
               upload="overlap" if overlap else "sync")
    return row


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _overhead_ms(r: Any, workers: int) -> float:
    """The workers' own figure (their heartbeats, after one more beat): pbt-mq's mean time per
    segment besides load, train, evaluate and save, weighted by segments."""
    time.sleep(2.5)
    beats = [Heartbeat.read(r, worker_key(w.decode()), "segments", "overhead_ms") for w in r.zrange(WORKERS, 0, -1)]
    total = sum(b.segments for b in beats if b.overhead_ms is not None)
    return sum(b.segments * (b.overhead_ms or 0.0) for b in beats) / total if total else 0.0


def _warm_up(r: Any, wd: Path, workers: int) -> None:
    """Wait until every worker heartbeats: process start-up is not the fleet's speed."""
    deadline = time.monotonic() + 60
    while r.zcard(WORKERS) < workers and time.monotonic() < deadline:
        time.sleep(0.05)


def analyse(r: Any, exp: str) -> dict[str, Any]:
    events = [(entry_ms(eid) / 1000, ReadyEvent.decode(f[b"msg"])) for eid, f in r.xrange(Keys(exp).events, "-", "+")]
    actions = {(rec.member, rec.seq): rec.action for rec in records(r, exp)}
    spans: dict[str, list[float]] = {}
    user: dict[str, float] = {}
    warm = cached = cold = exploits = 0
    exploit_bytes = 0
    for published, ev in events:
        t = ev.timings_s
        busy = sum(t.get(x, 0.0) for x in PHASES)
        lo_hi = spans.setdefault(ev.worker, [published - busy, published])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], published - busy), max(lo_hi[1], published)
        user[ev.worker] = user.get(ev.worker, 0.0) + t.get("train", 0.0) + t.get("eval", 0.0)
        before = actions.get((ev.member, ev.seq - 1))
        kind = start_kind(t)
        if before is Action.CONTINUE:
            warm += kind == "warm"
            cached += kind == "cached"
            cold += kind not in NO_DOWNLOAD
        elif before is Action.EXPLOIT:
            exploits += 1
            exploit_bytes += _start_size(ev, events) if kind not in NO_DOWNLOAD else 0
    wall = sum(hi - lo for lo, hi in spans.values())
    first = min(lo for lo, _ in spans.values())
    last = max(hi for _, hi in spans.values())
    return {
        "segments": len(events),
        "user_fraction": sum(user.values()) / wall if wall else 0.0,
        "warm_fraction": warm / (warm + cached + cold) if warm + cached + cold else 1.0,
        "no_download_fraction": (warm + cached) / (warm + cached + cold) if warm + cached + cold else 1.0,
        "continuing": warm + cached + cold,
        "exploits": exploits,
        "mb_per_exploit": exploit_bytes / exploits / 1e6 if exploits else 0.0,
        "segments_per_s": len(events) / (last - first) if last > first else 0.0,
    }


def _start_size(ev: ReadyEvent, events: list[tuple[float, ReadyEvent]]) -> int:
    """Bytes of the checkpoint a segment downloaded to start from (the donor's, after an exploit)."""
    for _, other in events:
        if other.checkpoint.key == ev.start_key:
            return other.checkpoint.size
    return 0


def format_fleet(rows: list[dict[str, Any]]) -> str:
    out = (f"{'workers':>7} | {'pop':>4} | {'segment':>7} | {'model':>6} | {'upload':>7} | {'segments':>8} | {'user time':>9} | "
           f"{'overhead':>8} | {'warm':>6} | {'no download':>11} | {'MB/exploit':>10} | {'segments/s':>10}\n")
    out += "-" * 131 + "\n"
    for x in rows:
        out += (f"{x['workers']:>7} | {x['population']:>4} | {x['segment_s']:>6g}s | {x['model_mb']:>4g}MB | {x['upload']:>7} | "
                f"{x['segments']:>8} | {x['user_fraction']:>9.1%} | {x['overhead_ms']:>6.2f}ms | {x['warm_fraction']:>6.0%} | "
                f"{x['no_download_fraction']:>11.0%} | "
                f"{x['mb_per_exploit']:>10.1f} | {x['segments_per_s']:>10.1f}\n")
    return out
