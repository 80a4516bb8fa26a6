"""Every Redis key pbt-mq uses, in one place. This docstring is the redis-cli reference.

One experiment lives under one prefix whose ``{hash tag}`` keeps all its keys in one Redis
Cluster slot. Hashes and stream entries are typed records in ``core.model`` (each field's
meaning is its doc there, and in ``docs/redis.md``); the field lists below are checked
against those records by ``tests/core/test_model.py``, so they cannot go stale::

    pbt:{EXP}:meta              HASH   core.model.Meta: state, reason, name, created_ms, done_ms, population,
                                       seed, queue, store, metric, mode, finished, config, schema
    pbt:{EXP}:member:{M}        HASH   core.model.Member: state, seq, step, hparams, why, job, cmd, queue,
                                       queued_ms, started_ms, updated_ms, limbo_ms, worker, score, scored_step,
                                       ckpt_key, ckpt_sha256, ckpt_size, ckpt_hparams, train_s, parent,
                                       parent_step, last_exploit, reason, error, attempt, reaped, replaced,
                                       replaced_step, window
    pbt:{EXP}:scores            ZSET   member -> latest finite score of a member that has a checkpoint (the
                                       leaderboard; donors come from here). Stored so that higher is
                                       better: for mode = "min" the stored score is -metric.
    pbt:{EXP}:ckpts             HASH   member -> core.model.ScoredCheckpoint (JSON: key, sha256, size,
                                       step, hparams): the checkpoint its leaderboard score belongs to
    pbt:{EXP}:windows           HASH   member -> the last exploit.window scores (leaderboard units, space separated,
                                       oldest first) of the checkpoint in ckpts; with a window > 1 the boards
                                       and the leaderboard hold their mean
    pbt:{EXP}:board:{B}         ZSET   member -> its score at ready point B (the step, or with [ready] seconds
                                       the train time in ready periods), higher is better: the board a
                                       member reporting B is ranked on (exploit.compare = "step")
    pbt:{EXP}:eligible          ZSET   member -> latest finite score, for members whose latest score is at a step
                                       >= exploit.burn_in_steps: the board with compare = "latest" and a burn-in
    pbt:{EXP}:boards            ZSET   B -> B: the boards that exist (trimmed once every live member passed)
    pbt:{EXP}:reached           ZSET   member -> the last ready point it reported (live members only;
                                       dropped by an arbiter that sees the experiment end)
    pbt:{EXP}:scores:vectors    HASH   (several metrics) member -> its latest metric values (JSON list, in the
                                       order of metric = [...]), finite only: the front pbt status shows.
                                       Every board B of a multi-objective experiment has one too, B:vectors,
                                       which the arbiter orders by non-dominated rank and crowding distance
    pbt:{EXP}:waiting           ZSET   member -> the ready point it waits at (exploit.synch: its event is decided
                                       once every live member reported that point)
    pbt:{EXP}:parked            HASH   member -> its parked ready event while it waits (msgpack: the stream entry
                                       id and the event), decided from here when its round completes
    pbt:{EXP}:refused           HASH   arbiter name -> why it cannot decide this experiment (a plug-in rule not on
                                       its allowlist, or failing to import): it leaves the events to others
    pbt:{EXP}:parents           HASH   checkpoint key -> the checkpoint its segment started from
                                       (the lineage as a tree, for garbage collection)
    pbt:{EXP}:uploading         ZSET   checkpoint key -> upload start (ms), until its event is published
    pbt:{EXP}:stored            ZSET   published checkpoint key -> time (ms): what the garbage
                                       collector may delete once nothing needs it
    pbt:{EXP}:events            STREAM ready events: member, seq, step, score (plain fields) + msg
                                       (the msgpack core.protocol.ReadyEvent); with a plain field failed = 1,
                                       a failed segment to replace (core.failed.FailedEvent)
    pbt:{EXP}:lineage           STREAM core.model.Lineage (one entry per decision): member, seq, start_step,
                                       step, score, action, start_key, ckpt_key, hparams, next_hparams, parent,
                                       parent_step, next_start_key, ops, reason, worker, declined_donor, board,
                                       board_at, seed, objectives, n, worse, better, k, snapshot, windows,
                                       timings
    pbt:{EXP}:archive           LIST   the lineage records moved to the store, one JSON entry per chunk, oldest
                                       first (state.archive.Chunk: key, sha256, size, count, first, last)
    pbt:{EXP}:dead              STREAM core.model.DeadLetter: reason, source, entry, raw, worker
    pbt:{EXP}:tracking          HASH   core.model.TrackingState: holder, lease_ms, events, lineage, sent, lost,
                                       done_ms, problem, problem_ms
    pbt:{EXP}:runs              HASH   TRACKER/MEMBER -> the member's run id in that tracker (mlflow, wandb),
                                       written once (HSETNX): one run per member, whoever sends
    pbt:experiments             ZSET   experiment id -> created time (ms); global index
    pbt:worker:{ID}             HASH   core.model.Heartbeat (expires 3 beats after it dies): host, pid, device,
                                       queue, current, beat_ms, segments, warm, cold, cached, cache_bytes,
                                       cache_limit, overhead_ms
    pbt:workers                 ZSET   worker id -> last heartbeat (ms)
    pbt:dead                    STREAM core.model.DeadLetter (jobs refused by workers): reason, source, entry,
                                       raw, worker

The arbiters' consumer group on every events stream is ``arbiters``. RQ's own keys
(``rq:queue:pbt``, ``rq:job:...``) hold queued segments; job ids are ``EXP_M_SEQ`` so a
redelivered decision can never queue a second copy. ``rq:queue:pbt@{ID}`` is worker ID's own
queue (it reads it before the shared one): segments whose start checkpoint it holds, sent there
when it is idle and no one waits in the shared queue. A job's hash may carry two fields of ours:
``pbt_home`` (the worker holding its start checkpoint, which takes it first) and
``pbt_passed_ms`` (when another worker first passed it over; see ``broker/lua/take_job.lua``).

On a Redis Cluster (recognised when connecting) the RQ keys a decision writes move into the
experiment's slot too (``broker.cluster``): ``rq:queue:pbt:{EXP}`` (one queue per experiment;
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

from pbt_mq.core.model import DeadLetter, Heartbeat, Lineage, Member, Meta, Record, TrackingState

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
    def windows(self) -> str:
        return f"{self.prefix}:windows"

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
    def archive(self) -> str:
        return f"{self.prefix}:archive"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def tracking(self) -> str:
        return f"{self.prefix}:tracking"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:runs"

    def member(self, member: str) -> str:
        return f"{self.prefix}:member:{member}"

    def board(self, at: int) -> str:
        """The scores members reported at ready point ``at`` (exploit.compare = "step")."""
        return f"{self.prefix}:board:{at}"

    @property
    def eligible(self) -> str:
        """The latest scores of members past the burn-in (exploit.compare = "latest", burn_in_steps > 0)."""
        return f"{self.prefix}:eligible"

    @staticmethod
    def vectors(board: str) -> str:
        """Several metrics: the objective vectors of the members on ``board`` (a key of this experiment)."""
        return f"{board}:vectors"

    @property
    def waiting(self) -> str:
        """exploit.synch: member -> the ready point it waits at (control.synch)."""
        return f"{self.prefix}:waiting"

    @property
    def parked(self) -> str:
        """exploit.synch: member -> its ready event, parked until its round completes (control.synch)."""
        return f"{self.prefix}:parked"

    @property
    def refused(self) -> str:
        """Arbiters that cannot decide this experiment, and why (control.refusals)."""
        return f"{self.prefix}:refused"

    @property
    def boards(self) -> str:
        return f"{self.prefix}:boards"

    @property
    def reached(self) -> str:
        return f"{self.prefix}:reached"


# ---------------------------------------------------------------- the reference, for people

KEY_TABLE: tuple[tuple[str, str, str | type[Record]], ...] = (
    ("pbt:{EXP}:meta", "hash", Meta),
    ("pbt:{EXP}:member:{M}", "hash", Member),
    ("pbt:{EXP}:scores", "zset", "the leaderboard: member -> latest finite score (negated for mode = min)"),
    ("pbt:{EXP}:ckpts", "hash", "member -> the checkpoint its score belongs to (JSON: key, sha256, size, step, hparams)"),
    ("pbt:{EXP}:windows", "hash", "member -> the last exploit.window scores of its checkpoint in ckpts (space "
                                  "separated); with a window > 1 the boards hold their mean"),
    ("pbt:{EXP}:board:{B}", "zset", "member -> its score at ready point B: what a member reporting B is ranked on"),
    ("pbt:{EXP}:boards, :reached", "zset, zset",
     "the boards that exist; member -> the last ready point it reported (dropped by an arbiter that sees it end)"),
    ("pbt:{EXP}:eligible", "zset", "member -> latest score at a step >= exploit.burn_in_steps: the board of "
                                   "compare = latest with a burn-in"),
    ("pbt:{EXP}:events", "stream", "ready events: member, seq, step, score as plain fields, plus msg (msgpack); "
                                   "failed = 1: a failed segment whose member is to be replaced"),
    ("pbt:{EXP}:lineage", "stream", Lineage),
    ("pbt:{EXP}:archive", "list", "lineage records moved to the store: one JSON entry per chunk (key, sha256, size,"
                                  " count, first, last), oldest first"),
    ("pbt:{EXP}:dead", "stream", DeadLetter),
    ("pbt:{EXP}:scores:vectors, BOARD:vectors", "hash", "several metrics: member -> its metric values (JSON list), "
                                                        "latest (the front) and per board"),
    ("pbt:{EXP}:waiting, :parked", "zset, hash", "exploit.synch: member -> the ready point it waits at; member -> "
                                                  "its ready event (msgpack), decided when every live member got there"),
    ("pbt:{EXP}:refused", "hash", "arbiter name -> why it cannot decide this experiment (a plug-in not on its "
                                  "allowlist): it leaves the events to others"),
    ("pbt:{EXP}:parents, :uploading, :stored", "hash, zset, zset", "checkpoint bookkeeping for garbage collection"),
    ("pbt:{EXP}:tracking", "hash", TrackingState),
    ("pbt:{EXP}:runs", "hash", "TRACKER/MEMBER -> the member's run id in MLflow or W&B (written once)"),
    ("pbt:{EXP}:quarantine:{NAME}:{MS}", "any", "a key that held another type than any release writes there, "
                                                "moved aside by an arbiter at MS (control.quarantine); never read"),
    ("pbt:experiments", "zset", "experiment id -> created time (ms)"),
    ("pbt:workers", "zset", "worker id -> last heartbeat (ms)"),
    ("pbt:worker:{ID}", "hash", Heartbeat),
    ("rq:queue:pbt", "list", "queued segment job ids (EXP_M_SEQ)"),
    ("rq:queue:pbt@{ID}", "list", "a worker's own queue: continuing segments of the members it holds live"),
)


def key_table() -> str:
    """The README's redis-cli table: every key, its type, and (for records) every field."""
    rows = ["| key | type | what |", "|---|---|---|"]
    for key, kind, what in KEY_TABLE:
        if not isinstance(what, str):
            what = f"{what.__doc__.splitlines()[0].split(': ', 1)[-1].rstrip('.')}: " + ", ".join(what.spec())
        rows.append(f"| `{key}` | {kind} | {what} |")
    return "\n".join(rows)


def field_reference() -> str:
    """``docs/redis.md``'s field-by-field reference of every record."""
    out = []
    for key, _, what in KEY_TABLE:
        if isinstance(what, str):
            continue
        out += [f"### `{key}`", "", what.__doc__.splitlines()[0], "", "| field | what |", "|---|---|"]
        out += [f"| `{name}` | {doc.replace('|', chr(92) + '|')} |" for name, (_, doc) in what.spec().items()]
        out.append("")
    return "\n".join(out)
