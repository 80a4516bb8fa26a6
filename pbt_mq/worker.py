"""``pbt-worker``: an RQ worker (one per GPU) that runs segments in its own process.

It uses RQ's ``SimpleWorker`` (no fork per job) so the model stays live on the
device between segments, the msgpack serializer, and ``SegmentJob`` so nothing but
the segment runner can run. A heartbeat thread refreshes ``pbt:worker:{ID}`` every
``--heartbeat-s`` seconds with a TTL of three beats: a dead worker's key vanishes
within seconds. SIGTERM finishes the current segment, then exits (RQ's warm
shutdown); a second SIGTERM abandons it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time

import redis
from rq import Queue
from rq.exceptions import DeserializationError
from rq.job import Job
from rq.worker import SimpleWorker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from .cluster import ExperimentQueue, TaggedSegmentJob, is_cluster
from .experiment import now_ms, queue_for
from .keys import DEAD, DEFAULT_QUEUE, WORKERS, private_queue, worker_key
from .protocol import ProtocolError
from .segment import Runtime, install
from .serializer import MsgpackSerializer, SegmentJob

log = logging.getLogger("pbt_mq.worker")


def default_worker_id(device: str) -> str:
    raw = f"{socket.gethostname()}-{os.getpid()}-{device}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)[:100]


class Heartbeat(threading.Thread):
    def __init__(self, r: redis.Redis, rt: Runtime, queue: str, interval_s: float = 2.0):
        super().__init__(name="pbt-heartbeat", daemon=True)
        self.r, self.rt, self.queue, self.interval_s = r, rt, queue, interval_s
        self.halt = threading.Event()

    def beat(self) -> None:
        key = worker_key(self.rt.worker_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "device": self.rt.device,
                "queue": self.queue,
                "current": self.rt.current,
                "beat_ms": now_ms(),
                "segments": self.rt.stats["segments"],
                "warm": self.rt.stats["warm"],
                "cold": self.rt.stats["cold"],
            },
        )
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


class SegmentWorker(SimpleWorker):
    def _set_connection(self, connection: redis.Redis) -> redis.Redis:
        if is_cluster(connection):  # RQ tunes a pool's socket timeout; a cluster has one pool per node
            return connection
        return super()._set_connection(connection)


class WorkerIdRefused(RuntimeError):
    pass


WORKER_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _outlive_previous_heartbeat(r: redis.Redis, worker_id: str) -> None:
    key = worker_key(worker_id)
    beat = r.hget(key, "beat_ms")
    if beat is None:
        return
    log.warning("worker %s: a heartbeat under this id is still there; waiting for it to expire", worker_id)
    deadline = time.monotonic() + max(r.pttl(key), 0) / 1000 + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_beat = r.hget(key, "beat_ms")
        if now_beat is None:
            return
        if now_beat != beat:
            break
    age_s = max(0.0, now_ms() - int(r.hget(key, "beat_ms") or beat)) / 1000
    raise WorkerIdRefused(f"worker id {worker_id!r} is in use: a live worker beat {age_s:.1f} s ago ({key});"
                        " give this one another --id / PBT_WORKER_ID")


def claim_worker_id(r: redis.Redis, worker_id: str, queue: str) -> None:
    """Refuse an id a live worker heartbeats under; clear what a killed one left behind.

    A worker restarted under its old id (a pod, a compose service, PID 1 in a container)
    after SIGKILL or OOM finds its previous life's heartbeat, alive for up to three beats,
    and RQ's registration of it, which RQ keeps for minutes and would refuse to start over.
    So it waits for that heartbeat to expire (a live twin would refresh it: refused), then
    clears RQ's leftovers."""
    if not WORKER_ID.fullmatch(worker_id):
        raise WorkerIdRefused(f"worker id {worker_id!r}: use 1-100 letters, digits, '.', '_' or '-'")
    _outlive_previous_heartbeat(r, worker_id)
    rq_key = SimpleWorker.redis_worker_namespace_prefix + worker_id
    if r.exists(rq_key):
        log.warning("worker %s: clearing the RQ registration its previous life left behind", worker_id)
        pipe = r.pipeline(transaction=False)
        pipe.delete(rq_key)
        pipe.srem(REDIS_WORKER_KEYS, rq_key)
        pipe.srem(WORKERS_BY_QUEUE_KEY % queue, rq_key)
        pipe.execute()


def serve(
    r: redis.Redis,
    queue: str = DEFAULT_QUEUE,
    device: str = "cpu",
    worker_id: str | None = None,
    burst: bool = False,
    heartbeat_s: float = 2.0,
    max_jobs: int | None = None,
    live_models: int = 1,
) -> Runtime:
    rt = Runtime(r, worker_id or default_worker_id(device), device, live_models)
    claim_worker_id(r, rt.worker_id, queue)
    install(rt)
    hb = Heartbeat(r, rt, queue, heartbeat_s)
    hb.beat()
    hb.start()
    def refuse(job: Job, exc_type: type, exc: BaseException, tb: object) -> bool:
        """Dead-letter jobs that are not ours to run (forged, pickled, unreadable), with the reason."""
        if isinstance(exc, (ProtocolError, DeserializationError)):
            why = exc.__cause__ or exc  # RQ's DeserializationError wraps our ProtocolError
            r.xadd(DEAD, {"reason": f"{type(why).__name__}: {why}"[:2000], "source": f"rq:queue:{queue}",
                          "entry": job.id, "worker": rt.worker_id}, maxlen=10_000, approximate=True)
        return True  # and let RQ file it in its failed registry as usual

    if is_cluster(r):  # one queue per experiment in its slot; sweep them (see cluster.py)
        kind: dict = dict(queue_class=ExperimentQueue, job_class=TaggedSegmentJob)
        queues = [ExperimentQueue(queue, connection=r, serializer=MsgpackSerializer, job_class=TaggedSegmentJob)]
    else:
        kind = dict(job_class=SegmentJob)
        queues = [queue_for(r, private_queue(queue, rt.worker_id)), queue_for(r, queue)]  # its own first
    w = SegmentWorker(
        queues,
        connection=r,
        name=rt.worker_id,
        serializer=MsgpackSerializer,
        job_monitoring_interval=5,
        exception_handlers=[refuse],
        **kind,
    )
    try:
        # RQ logs four lines per job; ours logs one per segment. RQ's own detail stays at DEBUG.
        rq_level = "DEBUG" if log.getEffectiveLevel() <= logging.DEBUG else "WARNING"
        w.work(burst=burst, with_scheduler=False, max_jobs=max_jobs, logging_level=rq_level)
    finally:
        rt.uploads.wait()  # an overlapped upload in flight lands before the worker goes
        if not is_cluster(r):  # RQ indexes every queue it ever saw; this worker's own one goes with it
            try:
                r.srem(Queue.redis_queues_keys, queues[0].key)
            except redis.RedisError:
                pass
        hb.stop()
        log.info("worker %s stopped: %s", rt.worker_id, dict(rt.stats))
    return rt
