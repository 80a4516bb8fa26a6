"""Redis Cluster: one experiment per hash slot, experiments spread over the shards.

Every ``pbt:{EXP}:*`` key already carries the experiment as its hash tag. On a cluster
the RQ keys a decision writes in the same MULTI must share that slot too, so there

* each experiment has its own queue, ``rq:queue:{QUEUE}:{EXP}`` (workers poll the
  queues of the running experiments that use their queue name),
* a segment's job hash is ``rq:job:{EXP}JOBID`` (``jobs.TaggedSegmentJob``), and
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
from typing import Any

import redis
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException

from pbt_mq.core.ids import experiment_ids
from pbt_mq.core.keys import EXPERIMENTS, Keys
from pbt_mq.core.model import ExperimentState

# Whatever Redis or a Redis Cluster raises: the one tuple a daemon waits out (RedisClusterException is no RedisError)
REDIS_ERRORS = (redis.RedisError, RedisClusterException)

# A segment's job id is EXP_M_SEQ with an optional _aN / _rN suffix (see keys.job_id);
# member ids are m<digits>, so the experiment is everything before the last such tail.
JOB_ID = re.compile(r"^(?P<exp>[A-Za-z0-9_-]+)_m\d+_\d+(?:_[ar]\d+)?$")
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
    """A single-slot MULTI on a cluster, with the flags RQ reads on a redis-py pipeline.

    redis-py (5.x-8.x) keeps them on the cluster pipeline's execution strategy; read without a
    default, so a redis-py that moves them fails loudly (tests/test_cluster.py checks them)."""

    @property
    def explicit_transaction(self) -> bool:
        return bool(self._execution_strategy._explicit_transaction)  # noqa: SLF001 - the adapter's one internal

    @property
    def watching(self) -> bool:
        return bool(self._execution_strategy._watching)  # noqa: SLF001


class ClusterClient(RedisCluster):
    """A RedisCluster whose default pipeline suits RQ; ``transaction=True`` stays a real MULTI."""

    def pipeline(self, transaction: bool | None = None, shard_hint: Any = None) -> Any:
        if transaction is None:
            return LoosePipeline(self)
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        if transaction:
            pipe.__class__ = TransactionPipeline
        return pipe


def queue_name(base: str, exp: str) -> str:
    return f"{base}:{{{exp}}}"


_running: dict[str, Any] = {"at": 0.0, "ids": [], "turn": 0}


def running_queue_keys(r: Any, bases: list[str], refresh_s: float = 1.0) -> list[str]:
    """``rq:queue:{base}:{EXP}`` for every running experiment (ids re-read at most once a second)."""
    now = time.monotonic()
    if now - _running["at"] >= refresh_s:
        ids = experiment_ids(r.zrange(EXPERIMENTS, 0, -1))
        pipe = r.pipeline(transaction=False)
        for e in ids:
            pipe.hmget(Keys(e).meta, "state", "queue")
        rows = pipe.execute()
        _running.update(at=now, ids=[(e, (q or b"").decode()) for e, (s, q) in zip(ids, rows, strict=True)
                                     if s == ExperimentState.RUNNING.value.encode()])
    keys = ["rq:queue:" + queue_name(q, e) for e, q in _running["ids"] if q in bases]
    _running["turn"] += 1  # start each sweep at the next experiment: none starves behind an older one
    i = _running["turn"] % len(keys) if keys else 0
    return keys[i:] + keys[:i]


def connect_cluster(url: str, **kw: Any) -> ClusterClient:
    return ClusterClient.from_url(url, **kw)


def cluster_enabled(r: redis.Redis) -> bool:
    try:
        return bool(int(r.info("cluster").get("cluster_enabled", 0)))
    except (redis.ResponseError, ValueError):  # a server without INFO cluster (or a proxy)
        return False
