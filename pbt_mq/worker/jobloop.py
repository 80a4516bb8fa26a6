"""pbt-worker's job loop: take a segment job, run it, let its hash expire; stop when asked.

RQ's jobs and queues, without RQ's worker loop: a job costs one BLPOP (the worker's own queue
first, then the shared one), one HGETALL and one EXPIRE (``broker.jobs``), where RQ's
SimpleWorker spent about a dozen round trips of bookkeeping. Nothing of exactly-once rests on
that bookkeeping: a job runs only after ``claim_segment.lua`` makes it the member's current one,
its result is published only if it still is, and the reaper watches members, heartbeats and
queues, never RQ's registries. A job that cannot be read (forged, pickled, too large) is
dead-lettered with the reason. Stop requests (``worker.stopping``) are seen between jobs and
while waiting for one (the wait is at most ``POP_S``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redis.exceptions import RedisClusterException
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from pbt_mq.broker.jobs import fetch_segment, is_unreadable_job, job_finished, pop_job_id
from pbt_mq.core.keys import DEAD
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.state.recovery import dead_letter
from pbt_mq.worker.runtime import Runtime
from pbt_mq.worker.stopping import StopPolicy

log = logging.getLogger(__name__)
POP_S = 1.0  # longest wait for a job before the stop flag is looked at again
REDIS_DOWN = (redis.RedisError, RedisClusterException)


class JobLoop:
    def __init__(self, r: Any, rt: Runtime, queues: list[str], stop: StopPolicy, burst: bool = False,
                 max_jobs: int | None = None) -> None:
        self.r, self.rt, self.queues, self.stop = r, rt, queues, stop
        self.burst, self.max_jobs = burst, max_jobs
        self.jobs = 0

    def run(self) -> None:
        backoff = 0.1
        while not self.stop.requested and (self.max_jobs is None or self.jobs < self.max_jobs):
            try:
                job_id = pop_job_id(self.r, self.queues, POP_S)
                backoff = 0.1
            except REDIS_DOWN as exc:
                log.warning("worker %s: Redis unavailable (%s); retrying in %.1f s", self.rt.worker_id, exc, backoff)
                self.stop.event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if job_id is None:
                if self.burst:
                    return
                continue
            self.jobs += 1
            self.run_job(job_id)

    def run_job(self, job_id: str) -> None:
        try:
            job, payload = fetch_segment(self.r, job_id)
            cmd = SegmentCommand.decode(payload)
        except REDIS_DOWN as exc:
            log.error("job %s: Redis went away while reading it (%s); the reaper queues it again", job_id, exc)
            return
        except Exception as exc:  # noqa: BLE001 - forged, pickled, too large: refused, never run
            self.refuse(job_id, exc)
            return
        ok = False
        try:
            with UnixSignalDeathPenalty(job.timeout or -1, JobTimeoutException, job_id=job.id):
                self.rt.run(cmd, job.id)
            ok = True
        except REDIS_DOWN as exc:
            log.error("job %s: Redis unavailable (%s); the reaper queues the segment again", job_id, exc)
        except Exception as exc:  # noqa: BLE001 - the runtime recorded the failure (retry or failed member)
            log.debug("job %s raised %s", job_id, exc)
        try:
            job_finished(self.r, job, ok)
        except REDIS_DOWN:
            pass  # it expires with the next job that ends, or RQ's own cleanup; nothing depends on it

    def refuse(self, job_id: str, exc: BaseException) -> None:
        why = is_unreadable_job(exc) or exc
        log.error("job %s refused: %s", job_id, why)
        try:
            dead_letter(self.r, DEAD, reason=f"{type(why).__name__}: {why}"[:2000], source=f"rq:queue:{self.queues[-1]}",
                        entry=job_id, worker=self.rt.worker_id)
        except REDIS_DOWN:
            pass
