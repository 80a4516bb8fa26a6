"""Taking over a work dir whose previous fleet is gone (Ctrl-C, ``kill -9``, a reboot).

When ``pbt local`` starts its server on a work dir it is alone on it (the dir's lock, a fresh
port), so everything the previous fleet left in Redis belongs to processes that are dead:

* heartbeats (``pbt:worker:local-wN``, kept in the AOF with their TTL): deleted, so the workers
  restarted under the same ids start at once (``pbt-worker`` would wait for them to expire) and
  the segments they ran are orphans at once;
* segments in flight (members ``running``, or ``queued`` with their job taken from the queue by a
  dead worker, in RQ's intermediate queue or a dead worker's own queue): queued again from their
  start checkpoint, as the reaper does, without counting against ``worker.max_retries``;
* ready events the dead arbiter read but never acknowledged: made claimable at once, so the new
  arbiter (same consumer name) decides them in its first reclaim. A decision is made once whatever
  happens: ``decide.lua`` refuses a (member, seq) already decided;
* RQ's registration of the dead workers: cleared by each worker as it starts (``claim_worker_id``).

Members already done stay done; their checkpoints and the lineage are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from pbt_mq.broker.jobs import queue_for
from pbt_mq.control.reaper import Orphan, requeue
from pbt_mq.core.ids import experiment_ids, member_ids
from pbt_mq.core.keys import EXPERIMENTS, GROUP, WORKERS, Keys, worker_key
from pbt_mq.core.model import ExperimentState, Member, MemberState, Meta
from pbt_mq.state.experiment import is_paused, load_config
from pbt_mq.tools.fleet import ARBITER

log = logging.getLogger(__name__)
CLAIMABLE_IDLE_MS = 86_400_000  # an idle time past any --claim-idle-ms


def unfinished(r: Any) -> list[str]:
    """Experiments that are neither done, failed nor stopped by a user: running (their fleet died)
    or paused; oldest first."""
    ids = experiment_ids(r.zrange(EXPERIMENTS, 0, -1))
    pipe = r.pipeline(transaction=False)
    for e in ids:
        pipe.hmget(Keys(e).meta, *Meta.names("state", "reason"))
    metas = [Meta.pick(("state", "reason"), row) for row in pipe.execute()]
    return [e for e, m in zip(ids, metas, strict=True) if m.state is ExperimentState.RUNNING or is_paused(m)]


def forget_dead_fleet(r: Any) -> int:
    """Delete every heartbeat: no worker on this server can be alive (see the module docstring)."""
    ids = [w.decode() for w in r.zrange(WORKERS, 0, -1)]
    pipe = r.pipeline(transaction=False)
    for w in ids:
        pipe.delete(worker_key(w))
    pipe.delete(WORKERS)
    pipe.execute()
    return len(ids)


def recover(r: Any, exp: str) -> dict[str, int]:
    """Queue ``exp``'s segments in flight again and make its unacknowledged events claimable;
    returns counts (requeued, events)."""
    cfg = load_config(r, exp)
    k = Keys(exp)
    shared = queue_for(r, cfg.queue, exp)
    queued = {j.decode() for j in r.lrange(shared.key, 0, -1)}
    requeued = 0
    for m in member_ids(cfg.population):
        h = Member.read(r, k.member(m), "state", "job", "queue")
        lost = h.state is MemberState.QUEUED and h.job and h.job not in queued
        if h.state is MemberState.RUNNING or lost:
            own = h.queue if h.queue and h.queue != shared.name else ""  # a dead worker's own queue
            orphan = Orphan(m, h.job, h.state, "its fleet stopped (pbt local --resume)", own)
            requeued += requeue(r, exp, cfg, orphan, count=False) == "requeued"
    events, start = 0, "-"
    while pending := r.xpending_range(k.events, GROUP, min=start, max="+", count=1000):
        ids = [p["message_id"] for p in pending]
        r.xclaim(k.events, GROUP, ARBITER, 0, ids, idle=CLAIMABLE_IDLE_MS, justid=True)  # JUSTID: no delivery counted
        events += len(ids)
        last = ids[-1]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)
    log.info("%s: %d segments queued again, %d events claimable", exp, requeued, events)
    return {"requeued": requeued, "events": events}
