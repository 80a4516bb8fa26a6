"""``pbt-worker``: an RQ worker (one per GPU) that runs segments in its own process.

Jobs run in this process (no fork per job) so the model stays live on the device between
segments; they are RQ jobs (msgpack, ``SegmentJob``: nothing but the segment runner can run),
taken by ``worker.jobloop`` with three round trips per job instead of RQ's worker loop. A
heartbeat thread refreshes ``pbt:worker:{ID}`` every ``--heartbeat-s`` seconds with a TTL of
three beats: a dead worker's key vanishes within seconds. Stopping (SIGTERM, SIGINT, SLURM's
SIGUSR1, ``StopPolicy.request``) finishes the segment in flight within ``--grace-s``, else
abandons it to the reaper (``worker.stopping``), whatever Redis is doing.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from typing import Any

import redis

from pbt_mq.broker.cluster import is_cluster
from pbt_mq.broker.connect import probe
from pbt_mq.broker.jobs import forget_queue, forget_registration, queue_for
from pbt_mq.core.hooks import Hooks
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import DEFAULT_QUEUE, WORKERS, private_queue, worker_key
from pbt_mq.core.model import Heartbeat
from pbt_mq.worker.cache import default_limit_bytes as default_cache_bytes
from pbt_mq.worker.jobloop import JobLoop
from pbt_mq.worker.runtime import Runtime
from pbt_mq.worker.stopping import StopPolicy

log = logging.getLogger(__name__)
WORKER_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def default_worker_id(device: str) -> str:
    raw = f"{socket.gethostname()}-{os.getpid()}-{device}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:100]


class HeartbeatThread(threading.Thread):
    def __init__(self, r: Any, rt: Runtime, queue: str, interval_s: float = 2.0):
        super().__init__(name="pbt-heartbeat", daemon=True)
        self.r, self.rt, self.queue, self.interval_s = r, rt, queue, interval_s
        self.halt = threading.Event()

    def beat(self) -> None:
        key = worker_key(self.rt.worker_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, mapping=Heartbeat.fields(
            host=socket.gethostname(), pid=os.getpid(), device=self.rt.device, queue=self.queue,
            current=self.rt.current, beat_ms=now_ms(), segments=self.rt.stats["segments"],
            warm=self.rt.stats["warm"], cold=self.rt.stats["cold"], cached=self.rt.stats["cached"],
            cache_bytes=self.rt.cache.bytes, cache_limit=self.rt.cache.limit_bytes,
            overhead_ms=1000 * self.rt.overhead_s / max(1, self.rt.stats["segments"]),
        ))
        pipe.pexpire(key, int(self.interval_s * 3000))
        pipe.zadd(WORKERS, {self.rt.worker_id: now_ms()})
        pipe.execute()

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis restarting: keep beating
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.halt.set()
        try:
            self.r.delete(worker_key(self.rt.worker_id))
            self.r.zrem(WORKERS, self.rt.worker_id)
        except redis.RedisError:
            pass


class WorkerIdRefused(RuntimeError):
    pass


def _outlive_previous_heartbeat(r: Any, worker_id: str) -> None:
    key = worker_key(worker_id)
    beat = Heartbeat.read(r, key, "beat_ms").beat_ms
    if beat is None:
        return
    log.warning("worker %s: a heartbeat under this id is still there; waiting for it to expire", worker_id)
    deadline = time.monotonic() + max(r.pttl(key), 0) / 1000 + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_beat = Heartbeat.read(r, key, "beat_ms").beat_ms
        if now_beat is None:
            return
        if now_beat != beat:
            break
    age_s = max(0.0, now_ms() - (Heartbeat.read(r, key, "beat_ms").beat_ms or beat)) / 1000
    raise WorkerIdRefused(f"worker id {worker_id!r} is in use: a live worker beat {age_s:.1f} s ago ({key});"
                          " give this one another --id / PBT_WORKER_ID")


def claim_worker_id(r: Any, worker_id: str, queue: str) -> None:
    """Refuse an id a live worker heartbeats under; clear what a killed one left behind.

    A worker restarted under its old id (a pod, a compose service, PID 1 in a container)
    after SIGKILL or OOM finds its previous life's heartbeat, alive for up to three beats,
    and RQ's registration of it, which RQ keeps for minutes and would refuse to start over.
    So it waits for that heartbeat to expire (a live twin would refresh it: refused), then
    clears RQ's leftovers."""
    if not WORKER_ID.fullmatch(worker_id):
        raise WorkerIdRefused(f"worker id {worker_id!r}: use 1-100 letters, digits, '.', '_' or '-'")
    _outlive_previous_heartbeat(r, worker_id)
    if forget_registration(r, worker_id, queue):
        log.warning("worker %s: cleared the RQ registration its previous life left behind", worker_id)


def serve(r: Any, queue: str = DEFAULT_QUEUE, device: str = "cpu", worker_id: str | None = None,
          burst: bool = False, heartbeat_s: float = 2.0, max_jobs: int | None = None, live_models: int = 1,
          hooks: Hooks | None = None, grace_s: float = 25.0, signals: bool = True, cache_mb: int | None = None,
          affinity_wait_ms: int = 30_000) -> Runtime:
    """Serve segments until stopped; ``cache_mb``: host memory for checkpoints (None: ``worker.cache``'s
    default, 0: none); ``affinity_wait_ms``: see ``broker.jobs.take_job``."""
    cache_bytes = default_cache_bytes() if cache_mb is None else cache_mb << 20
    rt = Runtime(r, worker_id or default_worker_id(device), device, live_models, hooks, cache_bytes)
    stop = StopPolicy(grace_s, lambda: rt.in_flight, reachable=probe(r))
    if signals:
        stop.install()
    claim_worker_id(r, rt.worker_id, queue)
    hb = HeartbeatThread(r, rt, queue, heartbeat_s)
    hb.beat()
    hb.start()
    own = private_queue(queue, rt.worker_id)
    try:
        JobLoop(r, rt, [queue] if is_cluster(r) else [own, queue], stop, burst, max_jobs, affinity_wait_ms).run()
    finally:
        rt.loader.calls.close()  # a function's call (the loop API) sees run.done and returns
        rt.uploads.wait()  # an overlapped upload in flight lands before the worker goes
        if not is_cluster(r):  # RQ indexes every queue it ever saw; this worker's own one goes with it
            try:
                forget_queue(r, queue_for(r, own))
            except redis.RedisError:
                pass
        hb.stop()
        stop.finished()
        log.info("worker %s stopped: %s", rt.worker_id, dict(rt.stats))
    return rt
