"""Every Redis key pbt-mq uses, in one place. This docstring is the redis-cli reference.

One experiment lives under one prefix whose ``{hash tag}`` keeps all its keys in
one Redis Cluster slot::

    pbt:{EXP}:meta              HASH   state, name, created_ms, population, seed, queue,
                                       store, config (JSON), done_ms, reason
    pbt:{EXP}:scores            ZSET   member -> latest finite score of a member that has
                                       a checkpoint (the leaderboard; donors come from here).
                                       Scores are stored so that higher is better; for
                                       mode = "min" the stored score is -metric.
    pbt:{EXP}:ckpts             HASH   member -> JSON of the checkpoint its leaderboard score belongs
                                       to (key, sha256, size, step, hparams): what a donor gives
    pbt:{EXP}:parents           HASH   checkpoint key -> the checkpoint its segment started from
                                       (the lineage as a tree, for garbage collection)
    pbt:{EXP}:uploading         ZSET   checkpoint key -> upload start (ms), until its event is published
    pbt:{EXP}:stored            ZSET   published checkpoint key -> time (ms): what the garbage
                                       collector may delete once nothing needs it
    pbt:{EXP}:member:{M}        HASH   state, seq, step, score, metric, hparams (JSON),
                                       ckpt_key, ckpt_sha256, ckpt_size, worker, why,
                                       parent, parent_step, train_s, updated_ms, next_job
    pbt:{EXP}:events            STREAM ready events: member, seq, step, score (plain
                                       fields) + msg (the msgpack ReadyEvent)
    pbt:{EXP}:lineage           STREAM one entry per decision: member, seq, step, score,
                                       action (continue|exploit|done|failed), parent,
                                       parent_step, ops, hparams (JSON), snapshot (JSON)
    pbt:{EXP}:dead              STREAM dead letters: reason, source, raw
    pbt:experiments             ZSET   experiment id -> created time (ms); global index
    pbt:worker:{ID}             HASH   heartbeat of one pbt-worker (expires when it dies)
    pbt:workers                 ZSET   worker id -> last heartbeat (ms)
    pbt:dead                    STREAM jobs refused by workers: reason, source, entry (job id)

The arbiters' consumer group on every events stream is ``arbiters``. RQ's own keys
(``rq:queue:pbt``, ``rq:job:...``) hold queued segments; job ids are
``EXP_M_SEQ`` so a redelivered decision can never queue a second copy. ``rq:queue:pbt@{ID}`` is
worker ID's own queue (it reads it before the shared one): continuing segments of the members it
holds live, sent there when no one waits in the shared queue.

On a Redis Cluster (recognised when connecting) the RQ keys a decision writes move into
the experiment's slot too (cluster.py): ``rq:queue:pbt:{EXP}`` (one queue per experiment;
workers sweep those of the running experiments), ``rq:job:{EXP}EXP_M_SEQ`` and
``rq:queues:{EXP}``. ``pbt:experiments``, ``pbt:workers`` and the worker heartbeats are
single-key global entries, never written in the same transaction as an experiment's keys.

Try::

    redis-cli ZREVRANGE 'pbt:{EXP}:scores' 0 -1 WITHSCORES
    redis-cli HGETALL 'pbt:{EXP}:member:m000'
    redis-cli XRANGE 'pbt:{EXP}:events' - + COUNT 5
"""

from __future__ import annotations

from dataclasses import dataclass

ROOT = "pbt"
GROUP = "arbiters"
EXPERIMENTS = f"{ROOT}:experiments"
WORKERS = f"{ROOT}:workers"
DEAD = f"{ROOT}:dead"  # dead letters that belong to no experiment (e.g. forged RQ jobs)
DEFAULT_QUEUE = "pbt"


def private_queue(queue: str, worker_id: str) -> str:
    """A worker's own RQ queue, listened to before the shared one: the arbiter sends a member's
    continuing segment there, to the worker that holds its model live, when no one waits."""
    return f"{queue}@{worker_id}"


def worker_key(worker_id: str) -> str:
    return f"{ROOT}:worker:{worker_id}"


def job_id(experiment: str, member: str, seq: int) -> str:
    """RQ job id of a segment; RQ allows only [A-Za-z0-9_-], so dots become '_'."""
    raw = f"{experiment}.{member}.{seq}"
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)


@dataclass(frozen=True)
class Keys:
    """The keys of one experiment."""

    experiment: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}:{{{self.experiment}}}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def scores(self) -> str:
        return f"{self.prefix}:scores"

    @property
    def ckpts(self) -> str:
        return f"{self.prefix}:ckpts"

    @property
    def parents(self) -> str:
        return f"{self.prefix}:parents"

    @property
    def uploading(self) -> str:
        return f"{self.prefix}:uploading"

    @property
    def stored(self) -> str:
        return f"{self.prefix}:stored"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def lineage(self) -> str:
        return f"{self.prefix}:lineage"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def member(self, member: str) -> str:
        return f"{self.prefix}:member:{member}"
