"""Redis Cluster: one experiment per hash slot, experiments spread over the shards.

Every ``pbt:{EXP}:*`` key already carries the experiment as its hash tag. On a cluster
the RQ keys a decision writes in the same MULTI must share that slot too, so there

* each experiment has its own queue, ``rq:queue:{QUEUE}:{EXP}`` (workers poll the
  queues of the running experiments that use their queue name),
* a segment's job hash is ``rq:job:{EXP}JOBID`` (``TaggedSegmentJob``), and
* RQ's queue index for it is ``rq:queues:{EXP}``.

RQ itself knows nothing of clusters: its bookkeeping (worker registration, registries,
results) wraps cross-slot keys in WATCH/MULTI. ``ClusterClient`` gives RQ pipelines
that run those commands without the transaction (RQ's registries are advisory here;
what keeps segments exactly-once is pbt-mq's own per-member state, claimed by a Lua
script in the member's slot). pbt-mq's own transactions ask for ``transaction=True``
and stay real, single-slot transactions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import redis
from redis.cluster import ClusterPipeline, RedisCluster
from rq import Queue

from .serializer import SegmentJob

# A segment's job id is EXP_M_SEQ with an optional _aN / _rN suffix (see keys.job_id);
# member ids are m<digits>, so the experiment is everything before the last such tail.
_JOB_ID = re.compile(r"^(?P<exp>[A-Za-z0-9_-]+)_m\d+_\d+(?:_[ar]\d+)?$")
EXP_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
POLL_S = 0.02  # how long an idle cluster worker waits between sweeps of its queues


def is_cluster(r: Any) -> bool:
    return isinstance(r, RedisCluster)


class LoosePipeline:
    """RQ's ``connection.pipeline()`` on a cluster: WATCH/MULTI accepted, nothing atomic.

    Between ``watch()`` and ``multi()`` commands run at once (as on a watched redis-py
    pipeline); after ``multi()`` they are buffered and sent per node by ``execute()``.
    """

    def __init__(self, client: RedisCluster):
        self._client = client
        self._pipe = RedisCluster.pipeline(client, transaction=False)
        self._immediate = False
        self.explicit_transaction = False

    @property
    def watching(self) -> bool:
        return self._immediate

    def watch(self, *names: Any) -> None:
        self._immediate = True

    def unwatch(self) -> None:
        self._immediate = False

    def multi(self) -> None:
        self._immediate = False
        self.explicit_transaction = True

    def execute(self, raise_on_error: bool = True) -> list:
        try:
            return self._pipe.execute(raise_on_error=raise_on_error)
        finally:
            self.reset()

    def reset(self) -> None:
        self._pipe.reset()
        self._immediate = False
        self.explicit_transaction = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client if self._immediate else self._pipe, name)

    def __len__(self) -> int:
        return len(self._pipe)

    def __enter__(self) -> LoosePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()


class TransactionPipeline(ClusterPipeline):
    """A single-slot MULTI on a cluster, with the flag RQ reads on a redis-py pipeline."""

    @property
    def explicit_transaction(self) -> bool:
        return bool(getattr(self._execution_strategy, "_explicit_transaction", False))

    @property
    def watching(self) -> bool:
        return bool(getattr(self._execution_strategy, "_watching", False))


class ClusterClient(RedisCluster):
    """A RedisCluster whose default pipeline suits RQ; ``transaction=True`` stays a real MULTI."""

    def pipeline(self, transaction: bool | None = None, shard_hint: Any = None) -> Any:
        if transaction is None:
            return LoosePipeline(self)
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        if transaction:
            pipe.__class__ = TransactionPipeline
        return pipe


class TaggedSegmentJob(SegmentJob):
    """A segment job whose hash lives in its experiment's slot."""

    @classmethod
    def key_for(cls, job_id: str) -> str:
        m = _JOB_ID.match(job_id)
        if m is None:  # not a segment id (a forged job): RQ's plain key; the worker refuses it
            return cls.redis_job_namespace_prefix + job_id
        return f"{cls.redis_job_namespace_prefix}{{{m['exp']}}}{job_id}"


def queue_name(base: str, exp: str) -> str:
    return f"{base}:{{{exp}}}"


class ExperimentQueue(Queue):
    """One experiment's queue on a cluster; a worker's dequeue sweeps every running one."""

    @classmethod
    def for_experiment(cls, r: RedisCluster, base: str, exp: str, **kw: Any) -> ExperimentQueue:
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
                    queue.redis_queues_keys = f"rq:queues:{{{_tag(key)}}}"
                    return job, queue
            if timeout is None or time.monotonic() >= deadline:
                if timeout is not None:
                    from rq.exceptions import DequeueTimeout

                    raise DequeueTimeout(timeout, ",".join(bases))
                return None
            time.sleep(POLL_S)


def _tag(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


_running: dict[str, Any] = {"at": 0.0, "ids": [], "turn": 0}


def running_queue_keys(r: Any, bases: list[str], refresh_s: float = 1.0) -> list[str]:
    """``rq:queue:{base}:{EXP}`` for every running experiment (ids re-read at most once a second)."""
    from .experiment import RUNNING
    from .keys import EXPERIMENTS, Keys

    now = time.monotonic()
    if now - _running["at"] >= refresh_s:
        ids = [e.decode() for e in r.zrange(EXPERIMENTS, 0, -1)]
        pipe = r.pipeline(transaction=False)
        for e in ids:
            pipe.hmget(Keys(e).meta, "state", "queue")
        rows = pipe.execute()
        _running.update(at=now, ids=[(e, (q or b"").decode()) for e, (s, q) in zip(ids, rows, strict=True)
                                     if s == RUNNING.encode()])
    keys = [Queue.redis_queue_namespace_prefix + queue_name(q, e) for e, q in _running["ids"] if q in bases]
    _running["turn"] += 1  # start each sweep at the next experiment: none starves behind an older one
    i = _running["turn"] % len(keys) if keys else 0
    return keys[i:] + keys[:i]


def drain(r: RedisCluster, base: str, exp: str) -> int:
    """An ended experiment's queued jobs: no worker sweeps its queue any more, so delete them."""
    key = Queue.redis_queue_namespace_prefix + queue_name(base, exp)
    ids = [j.decode() for j in r.lrange(key, 0, -1)]
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.delete(TaggedSegmentJob.key_for(jid))
    pipe.delete(key)
    pipe.delete(f"rq:queues:{{{exp}}}")
    pipe.execute()
    return len(ids)


def connect_cluster(url: str, **kw: Any) -> ClusterClient:
    return ClusterClient.from_url(url, **kw)


def cluster_enabled(r: redis.Redis) -> bool:
    try:
        return bool(int(r.info("cluster").get("cluster_enabled", 0)))
    except (redis.ResponseError, ValueError):  # a server without INFO cluster (or a proxy)
        return False
