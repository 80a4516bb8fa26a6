"""The RQ adapter: every use of RQ (and of its internals) in pbt-mq is in this module.

Segment jobs are data: msgpack (``MsgpackSerializer``), never pickle, and ``SegmentJob`` runs
nothing but the segment runner the worker installs (``SegmentJob.install_runner``). RQ pickles
by default; anyone who can write to Redis could then run code on every GPU node.

RQ internals relied on (``tests/broker/test_rq_contract.py`` checks each against the installed
RQ): ``Queue.redis_queue_namespace_prefix``, ``Queue.redis_queues_keys``,
``Queue.intermediate_queue_key``, ``Queue._fetch_dequeued_job`` (the cluster sweep),
``Job.restore`` (bounding inflation), the ``_*_callback_name`` attributes (refused),
``Worker._set_connection`` and ``rq.worker_registration``'s key names (clearing a killed
worker's registration).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import redis
from rq import Queue, get_current_job
from rq.exceptions import DequeueTimeout, DeserializationError
from rq.job import Job
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import SimpleWorker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from pbt_mq.broker.cluster import JOB_ID, POLL_S, is_cluster, queue_name, running_queue_keys
from pbt_mq.broker.scripts import call as call_script
from pbt_mq.core.protocol import ProtocolError, safe_unpackb

# The job's function as named on the wire. Jobs carry it as a name, not an import path that is
# followed (SegmentJob.func returns the installed runner), and it is the first release's name,
# so workers and arbiters of both releases take each other's jobs during a rolling upgrade.
SEGMENT_FUNC = "pbt_mq.segment.run_segment"
MAX_JOB_BYTES = 4 << 20
REFUSED = b"PBT-REFUSED:"  # never the start of msgpack job data (an array)
QUEUE_PREFIX = Queue.redis_queue_namespace_prefix  # "rq:queue:"
RESULT_TTL_S = 5  # a finished segment's job hash and result: the lineage holds what it meant
FAILURE_TTL_S = 7 * 86400
AFFINITY_WINDOW = 64  # queued jobs a worker looks at for one whose start checkpoint it holds
HOME_FIELD = "pbt_home"  # in a job's hash: the worker holding its start checkpoint (take_job.lua)


def experiment_of(queue_key: str) -> str:
    """The experiment of a cluster queue key, ``rq:queue:BASE:{EXP}`` (its hash tag)."""
    return queue_key[queue_key.index("{") + 1 : queue_key.rindex("}")]


def queue_key(name: str) -> str:
    """The Redis list of a queue named ``name``."""
    return QUEUE_PREFIX + name


def bounded_inflate(raw: bytes, limit: int) -> bytes | None:
    """zlib-inflate at most ``limit`` bytes; None if it would be more (a zip bomb in Redis)."""
    try:
        d = zlib.decompressobj()
        out = d.decompress(raw, limit + 1)
    except zlib.error:
        return raw  # RQ also falls back to the raw bytes
    return None if len(out) > limit or d.unconsumed_tail else out


class MsgpackSerializer:
    """RQ's serializer protocol (``dumps``/``loads``); tuples come back as lists."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True, default=_default)

    @staticmethod
    def loads(data: bytes) -> Any:
        if data.startswith(REFUSED):  # SegmentJob.restore found the job's data too large to inflate
            raise ProtocolError(data[len(REFUSED):].decode())
        return safe_unpackb(data, max_bytes=MAX_JOB_BYTES)


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"cannot msgpack a {type(obj).__name__}; RQ jobs carry plain data only")


class UnsafeJob(ProtocolError):
    """A queued job that asks for anything but the segment runner."""


class SegmentJob(Job):
    """Runs only ``run_segment``: no other function, no bound method, no callbacks, no webhooks.

    RQ resolves callbacks by import path and calls them on success, failure (also when
    ``func`` refuses a job) and stop, and sends webhooks from the worker; a forged job
    could use either, so both are refused here, not only in ``func``.
    """

    def restore(self, raw_data: Any) -> Any:
        """RQ inflates a job's data before any check of ours: bound it first, so a job written
        straight into Redis cannot make a worker allocate gigabytes. Too large: the job is
        refused (dead-lettered with the reason) when it runs, as any forged job is."""
        data = raw_data.get(b"data") if isinstance(raw_data, dict) else None
        if isinstance(data, bytes) and bounded_inflate(data, MAX_JOB_BYTES) is None:
            why = f"job {self.id}: its data inflates past {MAX_JOB_BYTES >> 20} MiB; refused unread"
            raw_data = {**raw_data, b"data": REFUSED + why.encode()}
        exc_info = raw_data.get(b"exc_info") if isinstance(raw_data, dict) else None
        if isinstance(exc_info, bytes) and bounded_inflate(exc_info, MAX_JOB_BYTES) is None:
            raw_data = {**raw_data, b"exc_info": b"(refused: inflates past the limit)"}
        return super().restore(raw_data)

    runner: Callable[[bytes], Any] | None = None  # set by the worker process: run_segment

    @classmethod
    def install_runner(cls, fn: Callable[[bytes], Any]) -> None:
        """What a segment job calls: set once by ``pbt-worker`` before it takes jobs."""
        SegmentJob.runner = fn

    @property
    def func(self):  # type: ignore[override]
        if self.func_name != SEGMENT_FUNC or self.instance is not None:
            raise UnsafeJob(f"job {self.id}: refusing to run {self.func_name!r}; only {SEGMENT_FUNC} is allowed")
        self._refuse_extras()
        if SegmentJob.runner is None:
            raise RuntimeError("segment jobs run only inside pbt-worker (no runner installed)")
        return SegmentJob.runner

    def _refuse_extras(self) -> None:
        names = (self._success_callback_name, self._failure_callback_name, self._stopped_callback_name)
        if any(names):
            raise UnsafeJob(f"job {self.id}: callbacks are not allowed on segment jobs")
        if self.webhooks:
            raise UnsafeJob(f"job {self.id}: webhooks are not allowed on segment jobs")

    def _no_callback(self, name: str | None) -> None:
        if name:
            raise UnsafeJob(f"job {self.id}: refusing callback {name!r}; callbacks are not allowed on segment jobs")

    @property
    def success_callback(self):  # type: ignore[override]
        self._no_callback(self._success_callback_name)
        return None

    @property
    def failure_callback(self):  # type: ignore[override]
        self._no_callback(self._failure_callback_name)
        return None

    @property
    def stopped_callback(self):  # type: ignore[override]
        self._no_callback(self._stopped_callback_name)
        return None

    def send_webhooks(self, *args: Any, **kwargs: Any) -> None:
        """Never: a segment job has no webhooks, and a forged one gets no HTTP request from a GPU node."""
        if self.webhooks:
            self.log.warning("Job %s: ignoring %d webhook(s); not allowed on segment jobs", self.id, len(self.webhooks))


class TaggedSegmentJob(SegmentJob):
    """A segment job whose hash lives in its experiment's slot (Redis Cluster)."""

    @classmethod
    def key_for(cls, job_id: str) -> str:
        m = JOB_ID.match(job_id)
        if m is None:  # not a segment id (a forged job): RQ's plain key; the worker refuses it
            return cls.redis_job_namespace_prefix + job_id
        return f"{cls.redis_job_namespace_prefix}{{{m['exp']}}}{job_id}"


class ExperimentQueue(Queue):
    """One experiment's queue on a Redis Cluster; a worker's dequeue sweeps every running one."""

    @classmethod
    def for_experiment(cls, r: Any, base: str, exp: str, **kw: Any) -> ExperimentQueue:
        q = cls(queue_name(base, exp), connection=r, job_class=TaggedSegmentJob, **kw)
        q.redis_queues_keys = f"rq:queues:{{{exp}}}"
        return q

    @classmethod
    def dequeue_any(cls, queues: Iterable[Queue], timeout: int | None, connection: Any,
                    job_class: Any = None, serializer: Any = None, death_penalty_class: Any = None) -> Any:
        """Pop from the running experiments' queues of the worker's queue names (no cross-slot BLPOP)."""
        bases = [q.name for q in queues]
        deadline = time.monotonic() + (timeout or 0)
        while True:
            for key in running_queue_keys(connection, bases):
                job_id = connection.lpop(key)
                if job_id is None:
                    continue
                found = cls._fetch_dequeued_job(connection, key, job_id.decode(), job_class=job_class,
                                                serializer=serializer, death_penalty_class=death_penalty_class)
                if found is not None:
                    job, queue = found
                    queue.redis_queues_keys = f"rq:queues:{{{experiment_of(key)}}}"
                    return job, queue
            if timeout is None or time.monotonic() >= deadline:
                if timeout is not None:
                    raise DequeueTimeout(timeout, ",".join(bases))
                return None
            time.sleep(POLL_S)


def queue_for(r: Any, name: str, exp: str | None = None) -> Queue:
    """The RQ queue ``exp``'s segments go to: the shared ``name``, or on a Redis Cluster
    the experiment's own queue in its hash slot (see cluster.py)."""
    if is_cluster(r):
        if exp is None:
            raise ValueError("on a Redis Cluster every queue belongs to one experiment")
        return ExperimentQueue.for_experiment(r, name, exp, serializer=MsgpackSerializer)
    return Queue(name, connection=r, serializer=MsgpackSerializer, job_class=SegmentJob)


def enqueue(pipe: Any, queue: Queue, job_id: str, payload: bytes, timeout_s: int, description: str,
            home: str = "") -> None:
    """Queue a segment job inside ``pipe`` (already in MULTI): its hash and its place in the queue;
    ``home``: the worker that holds its start checkpoint (see ``take_job``)."""
    job = queue.create_job(SEGMENT_FUNC, args=[payload], job_id=job_id, timeout=timeout_s, result_ttl=RESULT_TTL_S,
                           failure_ttl=FAILURE_TTL_S, description=description)
    queue.enqueue_job(job, pipeline=pipe)
    if home:
        pipe.hset(job.key, HOME_FIELD, home)


def intermediate_key(queue: Queue) -> str:
    """Where a job sits between a worker's pop and its start (RQ's intermediate queue)."""
    return queue.intermediate_queue_key


def current_job_id() -> str:
    job = get_current_job()
    return job.id if job else ""


def is_unreadable_job(exc: BaseException) -> BaseException | None:
    """The reason a job could not even be read (forged, pickled, too large), or None."""
    if isinstance(exc, (ProtocolError, DeserializationError)):
        return exc.__cause__ or exc  # RQ's DeserializationError wraps our ProtocolError
    return None


class SegmentWorker(SimpleWorker):
    """RQ's in-process worker (no fork per job: the model stays live between segments)."""

    def _set_connection(self, connection: redis.Redis) -> redis.Redis:
        if is_cluster(connection):  # RQ tunes a pool's socket timeout; a cluster has one pool per node
            return connection
        return super()._set_connection(connection)


def make_worker(r: Any, queue: str, own_queue: str, name: str, exception_handlers: list) -> tuple[SegmentWorker, list]:
    """An RQ worker reading ``own_queue`` first, then ``queue`` (on a cluster: every running
    experiment's queue of that name); returns it and its queues."""
    if is_cluster(r):
        kind: dict = dict(queue_class=ExperimentQueue, job_class=TaggedSegmentJob)
        queues = [ExperimentQueue(queue, connection=r, serializer=MsgpackSerializer, job_class=TaggedSegmentJob)]
    else:
        kind = dict(job_class=SegmentJob)
        queues = [queue_for(r, own_queue), queue_for(r, queue)]
    w = SegmentWorker(queues, connection=r, name=name, serializer=MsgpackSerializer, job_monitoring_interval=5,
                      exception_handlers=exception_handlers, **kind)
    return w, queues


# ---------------------------------------------------------------- pbt-worker's own job loop
#
# ``worker.jobloop`` takes jobs with these calls instead of RQ's worker loop: take_job.lua (LPOP
# and the job's HGETALL in one round trip; BLPOP when every queue is empty; on a cluster one
# LPOP per running experiment's queue) and one EXPIRE after it, where RQ's SimpleWorker makes a
# dozen round trips of bookkeeping per job (registries, statuses, heartbeats, results). Jobs,
# queues and job hashes stay RQ's.


def take_job(r: Any, queue_names: list[str], timeout_s: float, worker: str = "",
             affinity_wait_ms: int = 0) -> tuple[Job, bytes, bool] | None:
    """The next segment job from the first non-empty of ``queue_names`` (on a Redis Cluster from any
    running experiment's queue of those names), waiting up to ``timeout_s``: the job, its payload,
    checked as RQ would run it (see ``segment_of``), and whether it had to wait for one; or None.
    One round trip when a job is waiting.

    ``worker`` and ``affinity_wait_ms`` > 0: of the first ``AFFINITY_WINDOW`` queued jobs, one homed
    at this worker (it holds the start checkpoint) is taken first, and a job is passed over for at
    most ``affinity_wait_ms`` (take_job.lua). A worker never waits for its own: with none queued it
    takes the first job homed nowhere, else the head."""
    argv = [worker, AFFINITY_WINDOW, affinity_wait_ms] if worker and affinity_wait_ms > 0 else []
    if is_cluster(r):
        deadline, waited = time.monotonic() + timeout_s, False
        while True:
            for key in running_queue_keys(r, queue_names):
                prefix = f"{TaggedSegmentJob.redis_job_namespace_prefix}{{{experiment_of(key)}}}"
                got = call_script(r, "take_job", [key], [prefix, *argv])
                if got:
                    jid = got[0].decode()
                    return (*_checked(r, jid, dict(zip(got[1][::2], got[1][1::2], strict=True))), waited)
            if time.monotonic() >= deadline:
                return None
            waited = True
            time.sleep(POLL_S)
    keys = [queue_key(q) for q in queue_names]
    got = call_script(r, "take_job", keys, [SegmentJob.redis_job_namespace_prefix, *argv])
    if got:
        jid = got[0].decode()
        return (*_checked(r, jid, dict(zip(got[1][::2], got[1][1::2], strict=True))), False)
    popped = r.blpop(keys, timeout=max(timeout_s, 0.01))
    if not popped:
        return None
    jid = popped[1].decode()
    return (*_checked(r, jid, r.hgetall(SegmentJob.key_for(jid))), True)


class UnreadableJob(ProtocolError):
    """A job taken from a queue that must not run (forged, pickled, too large, gone): ``job_id``, ``why``."""

    def __init__(self, job_id: str, why: BaseException) -> None:
        super().__init__(f"job {job_id}: {why}")
        self.job_id, self.why = job_id, why


def _checked(r: Any, job_id: str, raw: dict[bytes, bytes]) -> tuple[Job, bytes]:
    try:
        return segment_of(r, job_id, raw)
    except Exception as exc:  # noqa: BLE001 - whatever reading it raised, it is not run
        raise UnreadableJob(job_id, is_unreadable_job(exc) or exc) from None


def segment_of(r: Any, job_id: str, raw: dict[bytes, bytes]) -> tuple[Job, bytes]:
    """The job from its hash (``Job.restore``: its inflation bounded) and its segment payload, checked
    as RQ would run it (only the segment runner, no callbacks); ProtocolError or UnsafeJob otherwise
    (``is_unreadable_job`` names the reason)."""
    if not raw:
        raise ProtocolError(f"job {job_id}: its hash is gone (expired, or deleted)")
    job = (TaggedSegmentJob if is_cluster(r) else SegmentJob)(job_id, connection=r, serializer=MsgpackSerializer)
    job.restore(raw)
    if job.func_name != SEGMENT_FUNC or job.instance is not None:
        raise UnsafeJob(f"job {job.id}: refusing to run {job.func_name!r}; only {SEGMENT_FUNC} is allowed")
    job._refuse_extras()
    args = job.args
    if len(args) != 1 or not isinstance(args[0], bytes) or job.kwargs:
        raise ProtocolError(f"job {job.id}: a segment job carries one msgpack payload")
    return job, args[0]


def expire_job(job: Job, ok: bool) -> tuple:
    """The command that lets a finished job's hash expire (RESULT_TTL_S) like RQ's result; a failed
    one's lasts longer."""
    return ("EXPIRE", job.key, RESULT_TTL_S if ok else FAILURE_TTL_S)


def forget_registration(r: Any, worker_id: str, queue: str) -> bool:
    """Clear RQ's registration of a killed worker under ``worker_id`` (RQ keeps it for minutes and
    would refuse to start a worker with that name); False if there was none."""
    rq_key = SimpleWorker.redis_worker_namespace_prefix + worker_id
    if not r.exists(rq_key):
        return False
    pipe = r.pipeline(transaction=False)
    pipe.delete(rq_key)
    pipe.srem(REDIS_WORKER_KEYS, rq_key)
    pipe.srem(WORKERS_BY_QUEUE_KEY % queue, rq_key)
    pipe.execute()
    return True


def forget_queue(r: Any, queue: Queue) -> None:
    """Take a queue out of RQ's index of queues (a worker's own queue, when the worker goes)."""
    r.srem(Queue.redis_queues_keys, queue.key)


def drain(r: Any, base: str, exp: str) -> int:
    """An ended experiment's queued jobs on a Redis Cluster: no worker sweeps its queue any more."""
    key = queue_key(queue_name(base, exp))
    ids = [j.decode() for j in r.lrange(key, 0, -1)]
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.delete(TaggedSegmentJob.key_for(jid))
    pipe.delete(key)
    pipe.delete(f"rq:queues:{{{exp}}}")
    pipe.execute()
    return len(ids)


def time_limit(job: Job) -> UnixSignalDeathPenalty:
    """A segment's ``job.timeout`` as RQ enforces it (SIGALRM raises JobTimeoutException in the segment)."""
    return UnixSignalDeathPenalty(job.timeout or -1, JobTimeoutException, job_id=job.id)
