"""Prometheus metrics for ``pbt-arbiter`` / ``pbt-worker``, and TensorBoard scalars from workers.

Both are hooks (``core.hooks``), installed only when asked for (``--metrics-port N``,
``--tensorboard-dir DIR``); with none installed the arbiter and the workers skip the calls.
``prometheus_client`` (the ``metrics`` extra) is imported only when Prometheus is asked for;
nothing here imports torch or matplotlib.

Counters and histograms are updated by the hooks. Gauges that describe shared state
(queue depth, pending events, members by state) are read from Redis when Prometheus
scrapes, so they cost nothing between scrapes and every replica reports the same truth.

pbt-arbiter::

    pbt_decisions_total{experiment,action}  counter    handled ready events: continue|exploit|done|duplicate|dead
    pbt_exploits_total{experiment}          counter    exploit decisions
    pbt_decision_lag_seconds                histogram  ready event published -> its decision committed
    pbt_events_pending{experiment}          gauge      read by an arbiter, not yet acknowledged (XPENDING)
    pbt_events_undelivered{experiment}      gauge      in the stream, not yet read by any arbiter (capped at 10000)
    pbt_members{experiment,state}           gauge      members per state
    pbt_best_score{experiment}              gauge      the leaderboard's best, in the metric's own units
    pbt_queue_depth{queue}                  gauge      segments waiting in the RQ queue
    pbt_workers{health}                     gauge      workers by heartbeat: ok | stale (no beat for 6 s)

pbt-worker::

    pbt_segments_total{experiment,start}    counter    segments trained; start = warm|cached|cold|fresh|recovered
                                                       (warm and cached: no download; see worker.cache)
    pbt_steps_total{experiment}             counter    training steps
    pbt_segment_seconds{phase}              histogram  build (constructing a trainable)|load (its start
                                                       checkpoint)|train|eval|save per segment, wait = ready -> start
    pbt_checkpoint_bytes_total{direction}   counter    save|load
    pbt_checkpoint_seconds{direction}       histogram  save (serialize+hash+upload, overlapped ones too),
                                                       load (download+verify+decode; not a cache hit)
    pbt_queue_depth{queue}                  gauge      its own queue

TensorBoard (the ``tensorboard`` extra: tensorboardX): a worker started with ``--tensorboard-dir DIR`` writes every ``evaluate()``
metric, every numeric hyperparameter (``hparams/NAME``) and the segment's train time
(``time/train_s``) at the segment's step to ``DIR/EXP/MEMBER/``; run
``tensorboard --logdir DIR/EXP`` to see one curve per member. A member has one event file,
appended to by whichever worker runs its segment; its segments never overlap, so workers
sharing a filesystem take turns on it and its steps stay in the order they happened.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any

import redis

from pbt_mq.broker.jobs import queue_key
from pbt_mq.core.hooks import Hook
from pbt_mq.core.ids import member_ids
from pbt_mq.core.keys import GROUP, WORKERS, Keys
from pbt_mq.core.model import Member, Meta
from pbt_mq.core.protocol import PHASES, start_kind
from pbt_mq.observe.tbx import EventFiles
from pbt_mq.state.experiment import running_experiments

log = logging.getLogger(__name__)

STALE_MS = 6000
LAG_CAP = 10_000
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def _prometheus() -> Any:
    """prometheus_client, an optional dependency (the ``metrics`` extra), imported only when asked for."""
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise ImportError("--metrics-port needs prometheus-client: pip install 'pbt-mq[metrics]'") from None


class PrometheusHook(Hook):
    """Counters and histograms in their own registry (so a test process can start twice), served on a port."""

    def __init__(self, r: Any, role: str, port: int, addr: str = "0.0.0.0", queues: tuple[str, ...] = ()):
        pc = _prometheus()
        if hasattr(pc, "disable_created_metrics"):  # no *_created series: half the lines
            pc.disable_created_metrics()
        self.registry = reg = pc.CollectorRegistry()
        pc.ProcessCollector(registry=reg)
        pc.PlatformCollector(registry=reg)
        pc.GCCollector(registry=reg)
        if role == "arbiter":
            self.decisions = pc.Counter("pbt_decisions", "ready events handled, by outcome", ["experiment", "action"],
                                        registry=reg)
            self.exploits = pc.Counter("pbt_exploits", "exploit decisions", ["experiment"], registry=reg)
            self.lag = pc.Histogram("pbt_decision_lag_seconds", "ready event published -> decision committed",
                                    buckets=SECONDS_BUCKETS, registry=reg)
        else:
            self.segments = pc.Counter("pbt_segments", "segments trained", ["experiment", "start"], registry=reg)
            self.steps = pc.Counter("pbt_steps", "training steps", ["experiment"], registry=reg)
            self.phase = pc.Histogram("pbt_segment_seconds", "time per segment phase", ["phase"],
                                      buckets=SECONDS_BUCKETS, registry=reg)
            self.ckpt_bytes = pc.Counter("pbt_checkpoint_bytes", "checkpoint bytes moved", ["direction"], registry=reg)
            self.ckpt_s = pc.Histogram("pbt_checkpoint_seconds", "checkpoint save/load time", ["direction"],
                                       buckets=SECONDS_BUCKETS, registry=reg)
        reg.register(RedisCollector(r, role, queues))
        try:
            pc.start_http_server(port, addr=addr, registry=reg)
        except OSError as exc:
            raise OSError(f"--metrics-port {port}: cannot listen on {addr} ({exc.strerror}); each process"
                          " on a host needs its own port") from None
        log.info("metrics on http://%s:%d/metrics", addr, port)

    def decided(self, experiment: str, outcome: str, entry_id: bytes | str) -> None:
        self.decisions.labels(experiment, outcome).inc()
        if outcome == "exploit":
            self.exploits.labels(experiment).inc()
        if outcome in ("continue", "exploit", "done"):
            sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            self.lag.observe(max(0.0, time.time() - int(sid.split("-", 1)[0]) / 1000))

    def segment_done(self, cmd: Any, event: Any) -> None:
        t = event.timings_s
        self.segments.labels(cmd.experiment, start_kind(t)).inc()
        self.steps.labels(cmd.experiment).inc(max(0, event.step - cmd.step))
        for phase in (*PHASES, "wait"):
            if phase in t:
                self.phase.labels(phase).observe(t[phase])

    def checkpoint_saved(self, experiment: str, nbytes: int, seconds: float) -> None:
        self.ckpt_bytes.labels("save").inc(nbytes)
        self.ckpt_s.labels("save").observe(seconds)

    def checkpoint_loaded(self, experiment: str, nbytes: int, seconds: float) -> None:
        self.ckpt_bytes.labels("load").inc(nbytes)
        self.ckpt_s.labels("load").observe(seconds)


class TensorBoardHook(Hook):
    """Per-member scalars in ``DIR/EXP/MEMBER/``, one event file per member whichever worker trains
    it (``observe.tbx``, the adapter to tensorboardX)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.files = EventFiles()

    def segment_done(self, cmd: Any, event: Any) -> None:
        values = {k: float(v) for k, v in event.metrics.items() if _num(v)}
        values.update({f"hparams/{k}": float(v) for k, v in event.hparams.items() if _num(v)})
        values["time/train_s"] = float(event.timings_s.get("train", 0.0))
        try:
            self.append(self.root / event.experiment / event.member, event.step, values)
        except OSError as exc:  # a full or unmounted log disk must not fail the segment
            log.warning("tensorboard: %s %s: %s", event.experiment, event.member, exc)

    def append(self, logdir: Path, step: int, values: dict[str, float]) -> Path:
        return self.files.append(logdir, step, values)


# ---------------------------------------------------------------- scrape-time gauges


class RedisCollector:
    """Gauges read from Redis at scrape time; a Redis outage makes them absent, never fails the scrape."""

    def __init__(self, r: redis.Redis, role: str, queues: tuple[str, ...]):
        self.r, self.role, self.queues = r, role, queues

    def collect(self) -> Any:
        GaugeMetricFamily = importlib.import_module("prometheus_client.core").GaugeMetricFamily  # noqa: N806
        try:
            running = running_experiments(self.r) if self.role == "arbiter" else {}
            fams = self._arbiter(GaugeMetricFamily, running) if running or self.role == "arbiter" else []
            queues = set(self.queues) | {meta.queue or "pbt" for meta in running.values()}
            depth = GaugeMetricFamily("pbt_queue_depth", "segments waiting in the RQ queue", labels=["queue"])
            for q in sorted(queues):
                depth.add_metric([q], self.r.llen(queue_key(q)))
            fams.append(depth)
        except redis.RedisError as exc:
            log.warning("metrics scrape: redis: %s", exc)
            return
        yield from fams

    def _arbiter(self, Gauge: Any, running: dict[str, Meta]) -> list[Any]:
        pending = Gauge("pbt_events_pending", "events read by an arbiter, not yet acknowledged", labels=["experiment"])
        undelivered = Gauge("pbt_events_undelivered", "events not yet read by any arbiter", labels=["experiment"])
        members = Gauge("pbt_members", "members per state", labels=["experiment", "state"])
        best = Gauge("pbt_best_score", "the leaderboard's best score, in the metric's units", labels=["experiment"])
        for e, meta in running.items():
            p, u = self._stream_backlog(Keys(e).events)
            pending.add_metric([e], p)
            undelivered.add_metric([e], u)
            for state, n in self._member_states(e, meta.population).items():
                members.add_metric([e, state], n)
            top = self.r.zrevrange(Keys(e).scores, 0, 0, withscores=True)
            if top:
                best.add_metric([e], top[0][1] if meta.mode.split(",")[0] == "max" else -top[0][1])
        return [pending, undelivered, members, best, self._workers(Gauge)]

    def _stream_backlog(self, stream: str) -> tuple[int, int]:
        info = next((g for g in self.r.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())), None)
        if info is None:
            return 0, 0
        last = info["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        return int(info["pending"]), len(self.r.xrange(stream, f"({last}", "+", count=LAG_CAP))

    def _member_states(self, exp: str, population: int) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for m in member_ids(population):
            pipe.hmget(Keys(exp).member(m), "state")
        out: dict[str, int] = {}
        for row in pipe.execute():
            state = Member.pick(("state",), row).state
            key = str(state) if state else "unknown"
            out[key] = out.get(key, 0) + 1
        return out

    def _workers(self, Gauge: Any) -> Any:
        now = int(time.time() * 1000)
        g = Gauge("pbt_workers", "workers by heartbeat age", labels=["health"])
        g.add_metric(["ok"], self.r.zcount(WORKERS, now - STALE_MS, "+inf"))
        g.add_metric(["stale"], self.r.zcount(WORKERS, now - 600_000, f"({now - STALE_MS}"))
        return g


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
