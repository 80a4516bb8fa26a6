"""Prometheus metrics for ``pbt-arbiter`` / ``pbt-worker``, and TensorBoard scalars from workers.

Both are off unless asked for (``--metrics-port N``, ``--tensorboard-dir DIR``), and free
when off: the hooks in arbiter.py and segment.py read one module attribute,
``if metrics.ON: ...``, and checkpoint.save/load are wrapped with timers only by ``start``. ``prometheus_client`` (the ``metrics`` extra) is
imported only by ``start``; nothing here imports torch or matplotlib.

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

    pbt_segments_total{experiment,start}    counter    segments trained; start = warm|cold|fresh|recovered
    pbt_steps_total{experiment}             counter    training steps
    pbt_segment_seconds{phase}              histogram  load|train|eval|save per segment, wait = ready -> start
    pbt_checkpoint_bytes_total{direction}   counter    save|load
    pbt_checkpoint_seconds{direction}       histogram  save (serialize+hash+upload), load (download+verify+torch.load)
    pbt_queue_depth{queue}                  gauge      its own queue

TensorBoard: a worker started with ``--tensorboard-dir DIR`` writes every ``evaluate()``
metric, every numeric hyperparameter (``hparams/NAME``) and the segment's train time
(``time/train_s``) at the segment's step to ``DIR/EXP/MEMBER/``; run
``tensorboard --logdir DIR/EXP`` to see one curve per member. A member has one event file,
appended to by whichever worker runs its segment; its segments never overlap, so workers
sharing a filesystem take turns on it and its steps stay in the order they happened.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import redis

from .experiment import member_ids
from .keys import EXPERIMENTS, GROUP, WORKERS, Keys

log = logging.getLogger("pbt_mq.metrics")

ON = False  # read by the hooks; True once start() enabled Prometheus or TensorBoard output
STALE_MS = 6000
LAG_CAP = 10_000
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_prom: Any = None  # the metric objects, once Prometheus is on
_tb: TensorBoard | None = None


class _Prom:
    """The counters and histograms, in their own registry (so a test process can start twice)."""

    def __init__(self, role: str):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Histogram,
            gc_collector,
            platform_collector,
            process_collector,
        )

        self.registry = reg = CollectorRegistry()
        process_collector.ProcessCollector(registry=reg)
        platform_collector.PlatformCollector(registry=reg)
        gc_collector.GCCollector(registry=reg)
        if role == "arbiter":
            self.decisions = Counter("pbt_decisions", "ready events handled, by outcome", ["experiment", "action"], registry=reg)
            self.exploits = Counter("pbt_exploits", "exploit decisions", ["experiment"], registry=reg)
            self.lag = Histogram("pbt_decision_lag_seconds", "ready event published -> decision committed",
                                 buckets=SECONDS_BUCKETS, registry=reg)
        else:
            self.segments = Counter("pbt_segments", "segments trained", ["experiment", "start"], registry=reg)
            self.steps = Counter("pbt_steps", "training steps", ["experiment"], registry=reg)
            self.phase = Histogram("pbt_segment_seconds", "time per segment phase", ["phase"],
                                   buckets=SECONDS_BUCKETS, registry=reg)
            self.ckpt_bytes = Counter("pbt_checkpoint_bytes", "checkpoint bytes moved", ["direction"], registry=reg)
            self.ckpt_s = Histogram("pbt_checkpoint_seconds", "checkpoint save/load time", ["direction"],
                                    buckets=SECONDS_BUCKETS, registry=reg)


def start(
    r: redis.Redis,
    role: str,
    port: int = 0,
    addr: str = "0.0.0.0",
    queues: tuple[str, ...] = (),
    tensorboard_dir: str | None = None,
) -> Any:
    """Serve /metrics on ``port`` (0: no Prometheus) and/or write TensorBoard files; return the registry."""
    global ON, _prom, _tb
    if tensorboard_dir:
        _tb = TensorBoard(tensorboard_dir)
    if port:
        try:
            from prometheus_client import start_http_server
        except ImportError:
            raise ImportError("--metrics-port needs prometheus-client: pip install 'pbt-mq[metrics]'") from None
        import prometheus_client

        if hasattr(prometheus_client, "disable_created_metrics"):  # no *_created series: half the lines
            prometheus_client.disable_created_metrics()
        _prom = _Prom(role)
        _prom.registry.register(RedisCollector(r, role, queues))
        if role == "worker":
            _time_checkpoint_io()
        try:
            start_http_server(port, addr=addr, registry=_prom.registry)
        except OSError as exc:
            raise OSError(f"--metrics-port {port}: cannot listen on {addr} ({exc.strerror}); each process"
                          " on a host needs its own port") from None
        log.info("metrics on http://%s:%d/metrics", addr, port)
    ON = bool(port or tensorboard_dir)
    return _prom.registry if _prom else None


# ---------------------------------------------------------------- hooks (called only when ON)


def decided(exp: str, outcome: str, entry_id: bytes | str) -> None:
    """arbiter.py, after each handled event."""
    if _prom is None:
        return
    _prom.decisions.labels(exp, outcome).inc()
    if outcome == "exploit":
        _prom.exploits.labels(exp).inc()
    if outcome in ("continue", "exploit", "done"):
        sid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        _prom.lag.observe(max(0.0, time.time() - int(sid.split("-", 1)[0]) / 1000))


def segment_done(cmd: Any, event: Any) -> None:
    """segment.py, after a segment's ready event is published."""
    if _prom is not None:
        t = event.timings_s
        start = next((h for h in ("warm", "cold", "fresh", "recovered") if h in t), "?")
        _prom.segments.labels(cmd.experiment, start).inc()
        _prom.steps.labels(cmd.experiment).inc(max(0, event.step - cmd.step))
        for phase in ("load", "train", "eval", "save", "wait"):
            if phase in t:
                _prom.phase.labels(phase).observe(t[phase])
    if _tb is not None:
        _tb.write(cmd.experiment, cmd.member, event)


def checkpoint_io(direction: str, nbytes: int, seconds: float) -> None:
    """After each checkpoint save or load (see _time_checkpoint_io)."""
    if _prom is not None:
        _prom.ckpt_bytes.labels(direction).inc(nbytes)
        _prom.ckpt_s.labels(direction).observe(seconds)


def _time_checkpoint_io() -> None:
    """Wrap checkpoint.save/load (segment.py calls them through the module) with timers; only when on."""
    from . import checkpoint

    if getattr(checkpoint.save, "pbt_timed", False):
        return
    save, load = checkpoint.save, checkpoint.load

    def timed_save(store: Any, key: str, obj: Any) -> Any:
        t0 = time.perf_counter()
        ref = save(store, key, obj)
        checkpoint_io("save", ref.size, time.perf_counter() - t0)
        return ref

    def timed_load(store: Any, ref: Any, map_location: str = "cpu") -> Any:
        t0 = time.perf_counter()
        state = load(store, ref, map_location=map_location)
        checkpoint_io("load", ref.size, time.perf_counter() - t0)
        return state

    timed_save.pbt_timed = timed_load.pbt_timed = True  # type: ignore[attr-defined]
    checkpoint.save, checkpoint.load = timed_save, timed_load


# ---------------------------------------------------------------- scrape-time gauges


class RedisCollector:
    """Gauges read from Redis at scrape time; a Redis outage makes them absent, never fails the scrape."""

    def __init__(self, r: redis.Redis, role: str, queues: tuple[str, ...]):
        self.r, self.role, self.queues = r, role, queues

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        try:
            running = self._running() if self.role == "arbiter" else []
            fams = self._arbiter(GaugeMetricFamily, running) if running or self.role == "arbiter" else []
            queues = set(self.queues) | {(self.r.hget(Keys(e).meta, "queue") or b"pbt").decode() for e in running}
            depth = GaugeMetricFamily("pbt_queue_depth", "segments waiting in the RQ queue", labels=["queue"])
            for q in sorted(queues):
                depth.add_metric([q], self.r.llen(f"rq:queue:{q}"))
            fams.append(depth)
        except redis.RedisError as exc:
            log.warning("metrics scrape: redis: %s", exc)
            return
        yield from fams

    def _running(self) -> list[str]:
        ids = [e.decode() for e in self.r.zrange(EXPERIMENTS, 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for e in ids:
            pipe.hget(Keys(e).meta, "state")
        return [e for e, s in zip(ids, pipe.execute(), strict=True) if s == b"running"]

    def _arbiter(self, Gauge: Any, running: list[str]) -> list[Any]:
        pending = Gauge("pbt_events_pending", "events read by an arbiter, not yet acknowledged", labels=["experiment"])
        undelivered = Gauge("pbt_events_undelivered", "events not yet read by any arbiter", labels=["experiment"])
        members = Gauge("pbt_members", "members per state", labels=["experiment", "state"])
        best = Gauge("pbt_best_score", "the leaderboard's best score, in the metric's units", labels=["experiment"])
        for e in running:
            p, u = self._stream_backlog(Keys(e).events)
            pending.add_metric([e], p)
            undelivered.add_metric([e], u)
            for state, n in self._member_states(e).items():
                members.add_metric([e, state], n)
            top = self.r.zrevrange(Keys(e).scores, 0, 0, withscores=True)
            if top:
                mode = (self.r.hget(Keys(e).meta, "mode") or b"max").decode()
                best.add_metric([e], top[0][1] if mode == "max" else -top[0][1])
        return [pending, undelivered, members, best, self._workers(Gauge)]

    def _stream_backlog(self, stream: str) -> tuple[int, int]:
        info = next((g for g in self.r.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())), None)
        if info is None:
            return 0, 0
        last = info["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        return int(info["pending"]), len(self.r.xrange(stream, f"({last}", "+", count=LAG_CAP))

    def _member_states(self, exp: str) -> dict[str, int]:
        n = int(self.r.hget(Keys(exp).meta, "population") or 0)
        pipe = self.r.pipeline(transaction=False)
        for m in member_ids(n):
            pipe.hget(Keys(exp).member(m), "state")
        out: dict[str, int] = {}
        for s in pipe.execute():
            key = (s or b"unknown").decode()
            out[key] = out.get(key, 0) + 1
        return out

    def _workers(self, Gauge: Any) -> Any:
        now = int(time.time() * 1000)
        g = Gauge("pbt_workers", "workers by heartbeat age", labels=["health"])
        g.add_metric(["ok"], self.r.zcount(WORKERS, now - STALE_MS, "+inf"))
        g.add_metric(["stale"], self.r.zcount(WORKERS, now - 600_000, f"({now - STALE_MS}"))
        return g


# ---------------------------------------------------------------- TensorBoard


class TensorBoard:
    """Per-member scalars in ``DIR/EXP/MEMBER/``, one event file per member whichever worker trains it."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def write(self, exp: str, member: str, event: Any) -> None:
        from .tbevents import append

        values = {k: float(v) for k, v in event.metrics.items() if _num(v)}
        values.update({f"hparams/{k}": float(v) for k, v in event.hparams.items() if _num(v)})
        values["time/train_s"] = float(event.timings_s.get("train", 0.0))
        try:
            append(self.root / exp / member, event.step, values)
        except OSError as exc:  # a full or unmounted log disk must not fail the segment
            log.warning("tensorboard: %s %s: %s", exp, member, exc)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
