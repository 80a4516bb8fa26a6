"""pbt-worker's job loop: take a segment job, run it, let its hash expire; stop when asked.

RQ's jobs and queues, without RQ's worker loop: taking a job is one round trip (take_job.lua:
the worker's own queue first, then the shared one, and the job's hash; of the shared queue's
first jobs, one whose start checkpoint this worker holds first), and its EXPIRE rides
with the segment's last write (``broker.jobs``), where RQ's SimpleWorker spent about a dozen
round trips of bookkeeping per job. With the runtime's claim (one round trip, the announce
with it), the upload's registration and the publish (one script each), a segment costs five. Nothing of exactly-once rests on
that bookkeeping: a job runs only after ``claim_segment.lua`` makes it the member's current one,
its result is published only if it still is, and the reaper watches members, heartbeats and
queues, never RQ's registries. A job that cannot be read (forged, pickled, too large) is
dead-lettered with the reason. Stop requests (``worker.stopping``) are seen between jobs and
while waiting for one (the wait is at most ``POP_S``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pbt_mq.broker.cluster import REDIS_ERRORS
from pbt_mq.broker.jobs import UnreadableJob, expire_job, take_job, time_limit
from pbt_mq.core.keys import DEAD
from pbt_mq.core.protocol import ProtocolError, SegmentCommand
from pbt_mq.state.recovery import dead_letter
from pbt_mq.worker.runtime import Runtime
from pbt_mq.worker.stopping import StopPolicy

log = logging.getLogger(__name__)
POP_S = 1.0  # longest wait for a job before the stop flag is looked at again


class JobLoop:
    def __init__(self, r: Any, rt: Runtime, queues: list[str], stop: StopPolicy, burst: bool = False,
                 max_jobs: int | None = None, affinity_wait_ms: int = 0) -> None:
        self.r, self.rt, self.queues, self.stop = r, rt, queues, stop
        self.affinity_wait_ms = affinity_wait_ms
        self.burst, self.max_jobs = burst, max_jobs
        self.jobs = 0

    def run(self) -> None:
        backoff = 0.1
        while not self.stop.requested and (self.max_jobs is None or self.jobs < self.max_jobs):
            t0 = time.perf_counter()
            try:
                taken = take_job(self.r, self.queues, POP_S, self.rt.worker_id, self.affinity_wait_ms)
                backoff = 0.1
            except UnreadableJob as exc:
                self.jobs += 1
                self.refuse(exc.job_id, exc.why)
                continue
            except REDIS_ERRORS as exc:
                log.warning("worker %s: Redis unavailable (%s); retrying in %.1f s", self.rt.worker_id, exc, backoff)
                self.stop.event.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if taken is None:
                if self.burst:
                    return
                continue
            self.jobs += 1
            job, payload, waited = taken
            # taking a job that was waiting is overhead; waiting for one to be queued (the arbiter
            # deciding, the fleet idle) is not the worker's
            self.run_job(job, payload, time.perf_counter() if waited else t0)

    def run_job(self, job: Any, payload: bytes, t0: float) -> None:
        done = self.rt.stats["segments"]
        try:
            cmd = SegmentCommand.decode(payload)
        except ProtocolError as exc:
            self.refuse(job.id, exc)
            return
        ok = False
        try:
            with time_limit(job):
                self.rt.run(cmd, job.id, after=[expire_job(job, True)])
            ok = True
        except REDIS_ERRORS as exc:
            log.error("job %s: Redis unavailable (%s); the reaper queues the segment again", job.id, exc)
        except Exception as exc:  # noqa: BLE001 - the runtime recorded the failure (retry or failed member)
            log.debug("job %s raised %s", job.id, exc)
        if self.rt.stats["segments"] > done:  # published (its job's EXPIRE went with the publish)
            self.rt.overhead_s += time.perf_counter() - t0 - self.rt.last_phases_s
            return
        try:
            self.r.execute_command(*expire_job(job, ok))
        except REDIS_ERRORS:
            pass  # nothing depends on it

    def refuse(self, job_id: str, why: BaseException) -> None:
        log.error("job %s refused: %s", job_id, why)
        try:
            dead_letter(self.r, DEAD, reason=f"{type(why).__name__}: {why}"[:2000], source=f"rq:queue:{self.queues[-1]}",
                        entry=job_id, worker=self.rt.worker_id)
        except REDIS_ERRORS:
            pass
