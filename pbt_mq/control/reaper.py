"""The reaper: no member is ever stuck. Every arbiter runs it; running it twice is harmless.

A member that is not done is *queued* (its current job id sits in the RQ queue),
*running* (a worker claimed the job and is heartbeating) or *ready* (its event is in the
stream, which the arbiters' consumer group owns and reclaims). The sweep reads one atomic
snapshot of the queue and the members, and queues the member's current command again
(from the same start checkpoint) when:

* it is running on a worker whose heartbeat key expired (the worker died: SIGKILL, OOM,
  a lost node), or whose heartbeat says it is running something else;
* it is queued but its job is not in the queue for longer than ``grace_ms`` (the job was
  lost, e.g. a worker took it and stopped before starting it).

RQ's own abandoned-job handling takes minutes and fails the job instead of retrying it;
this takes one heartbeat TTL. The requeue is a WATCHed transaction on the member's hash,
so two arbiters sweeping at once queue it once. A segment that kills its worker more than
``worker.max_retries + 1`` times is given up (``state.failure``: the member is replaced, or failed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from pbt_mq.broker.jobs import intermediate_key, queue_for, queue_key
from pbt_mq.broker.scripts import call
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.ids import member_ids, now_ms
from pbt_mq.core.keys import Keys, worker_key
from pbt_mq.core.model import Heartbeat, Member, MemberState
from pbt_mq.core.protocol import ProtocolError, SegmentCommand
from pbt_mq.state.failure import give_up
from pbt_mq.state.finish import fail_member
from pbt_mq.state.segments import enqueue_segment

log = logging.getLogger(__name__)
FIELDS = Member.names("state", "seq", "job", "worker", "started_ms", "limbo_ms", "queue")


@dataclass(frozen=True)
class Orphan:
    member: str
    job: str
    state: MemberState
    reason: str
    queue: str = ""  # a worker's private queue the job was sent to, if any


def find_orphans(r: Any, exp: str, cfg: Experiment, grace_ms: int, now: int | None = None) -> list[Orphan]:
    k = Keys(exp)
    queue = queue_for(r, cfg.queue, exp)
    ids = member_ids(cfg.population)
    pipe = r.pipeline(transaction=True)  # one consistent view of queue and members
    pipe.lrange(queue.key, 0, -1)
    for m in ids:
        pipe.hmget(k.member(m), *FIELDS)
    queued_jobs, *rows = pipe.execute()
    in_queue = {j.decode() for j in queued_jobs}
    members = {m: Member.pick(FIELDS, row) for m, row in zip(ids, rows, strict=True)}
    for m in [m for m, h in members.items() if h.problems]:
        fail_unreadable(r, cfg, exp, m, members.pop(m))
    now = now if now is not None else now_ms()
    mine = cfg.queue + "@"
    homes = {m: h.queue for m, h in members.items() if h.state is MemberState.QUEUED and h.job
             and h.job not in in_queue and h.queue.startswith(mine)}
    owners = {m: q[len(mine):] for m, q in homes.items()}
    beats = _heartbeats(r, {h.worker for h in members.values() if h.state is MemberState.RUNNING and h.worker}
                        | set(owners.values()))
    waiting = _in_private_queues(r, {m: (homes[m], members[m].job) for m in homes})
    busy = [m for m in waiting if owners[m] in beats and not _free_for(beats[owners[m]], exp, m, members[m].seq,
                                                                        cfg.queue)]
    for m in busy:  # its worker took other work meanwhile: don't make the member wait for it
        if _to_shared(r, k, m, homes[m], members[m].job, queue):
            log.info("%s %s: %s is busy; its continuing segment moved to the shared queue", exp, m, owners[m])
    orphans, limbo = [], []
    for m, h in members.items():
        if h.state is MemberState.RUNNING:
            beat = beats.get(h.worker)
            if beat is None:
                orphans.append(Orphan(m, h.job, h.state, f"worker {h.worker} stopped heartbeating"))
            elif beat.current != f"{exp}/{m}/{h.seq}" and now - (h.started_ms or 0) > grace_ms:
                orphans.append(Orphan(m, h.job, h.state, f"worker {h.worker} is running {beat.current or 'nothing'}"))
        elif m in homes and (owners[m] not in beats or beats[owners[m]].queue != cfg.queue):
            orphans.append(Orphan(m, h.job, MemberState.QUEUED, f"worker {owners[m]} stopped heartbeating with the"
                                  " segment in its own queue", homes[m]))
        elif m in waiting:
            continue  # in its live worker's own queue: it takes it next
        elif h.state is MemberState.QUEUED and h.job and h.job not in in_queue:
            if h.limbo_ms is None:
                limbo.append(m)
            elif now - h.limbo_ms > grace_ms:
                orphans.append(Orphan(m, h.job, h.state, f"job {h.job} left the queue but never started"))
    if limbo:
        pipe = r.pipeline(transaction=False)
        for m in limbo:
            pipe.hsetnx(k.member(m), "limbo_ms", now)
        pipe.execute()
    return orphans


def fail_unreadable(r: Any, cfg: Experiment, exp: str, member: str, h: Member) -> None:
    """A member whose hash holds what no release writes (redis-cli): it alone fails, with what was wrong."""
    if h.state is not None and h.state.ended:
        return
    key = Keys(exp).member(member)
    reason = (f"its record {key} is unreadable: {'; '.join(h.problems)}; the member is failed so that the rest of "
              "the experiment goes on")
    if fail_member(r, cfg, exp, member, -1, reason):
        log.error("%s %s: %s", exp, member, reason)


def _in_private_queues(r: Any, jobs: dict[str, tuple[str, str]]) -> set[str]:
    """The members whose job still waits in the private queue it was sent to."""
    if not jobs:
        return set()
    pipe = r.pipeline(transaction=False)
    for name, job in jobs.values():
        pipe.lpos(queue_key(name), job)
    return {m for m, pos in zip(jobs, pipe.execute(), strict=True) if pos is not None}


def _heartbeats(r: Any, workers: set[str]) -> dict[str, Heartbeat]:
    """worker id -> its heartbeat (what it runs, '' if idle; its queue), for workers still alive."""
    names = sorted(workers)
    fields = Heartbeat.names("beat_ms", "current", "queue")
    pipe = r.pipeline(transaction=False)
    for w in names:
        pipe.hmget(worker_key(w), *fields)
    beats = {w: Heartbeat.pick(fields, row) for w, row in zip(names, pipe.execute(), strict=True)}
    return {w: b for w, b in beats.items() if b.beat_ms is not None}


def _free_for(beat: Heartbeat, exp: str, member: str, seq: int, queue: str) -> bool:
    """Will this worker take the member's next segment now: idle, or still finishing the member's
    previous one, and reading this queue?"""
    return beat.queue == queue and beat.current in ("", f"{exp}/{member}/{seq - 1}")


def _to_shared(r: Any, k: Keys, member: str, own: str, job: str, shared: Any) -> bool:
    return bool(call(r, "move_job", [queue_key(own), shared.key, k.member(member)], [job, shared.name]))


def requeue(r: Any, exp: str, cfg: Experiment, orphan: Orphan, count: bool = True) -> str:
    """Queue the orphan's current command again; returns what was done.

    ``count``: the requeue counts against ``worker.max_retries`` (a worker died on it). ``pbt local
    --resume`` passes False: a whole fleet that was stopped says nothing about the segment. The new
    job id's ``_rN`` is above both the count and the current job's own N, so it is always new."""
    k = Keys(exp)
    mkey = k.member(orphan.member)
    queue = queue_for(r, cfg.queue, exp)
    with r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(mkey)
            h = Member.read(pipe, mkey, "state", "job", "cmd", "reaped")
            if h.state is not orphan.state or h.job != orphan.job or h.cmd is None:
                pipe.unwatch()
                return "moved on"
            cmd = SegmentCommand.decode(h.cmd)
            n = h.reaped + 1 if count else h.reaped
            if count and n > cfg.worker.max_retries + 1:
                pipe.unwatch()
                return give_up(r, cfg, cmd, orphan.job, f"{orphan.reason}; gave up after {n - 1} requeues")
            pipe.multi()
            pipe.hset(mkey, mapping=Member.fields(reaped=n, error=f"requeued: {orphan.reason}"))
            pipe.lrem(intermediate_key(queue), 0, orphan.job)
            if orphan.queue:  # a dead worker's own queue: take the stale copy out
                pipe.lrem(queue_key(orphan.queue), 0, orphan.job)
            enqueue_segment(pipe, queue, cfg, cmd, suffix=f"_r{max(h.reaped, _requeue_number(h.job)) + 1}")
            pipe.execute()
        except redis.WatchError:
            return "raced"
        except ProtocolError as exc:
            fail_member(r, cfg, exp, orphan.member, -1, f"stored command is unreadable: {exc}")
            return "failed"
    log.log(logging.WARNING if count else logging.INFO, "%s %s: %s; requeued seq %d from %s", exp, orphan.member,
            orphan.reason, cmd.seq, cmd.start.key if cmd.start else "a fresh start")
    return "requeued"


def _requeue_number(job: str) -> int:
    """N of a job id ending in ``_rN`` (a requeued copy), else 0."""
    head, _, tail = job.rpartition("_r")
    return int(tail) if head and tail.isdigit() else 0


def sweep(r: Any, exp: str, cfg: Experiment, grace_ms: int) -> int:
    done = 0
    for orphan in find_orphans(r, exp, cfg, grace_ms):
        if requeue(r, exp, cfg, orphan) in ("requeued", "failed", "published"):
            done += 1
    return done
