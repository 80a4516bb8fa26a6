"""A segment that failed for good (its trainable raised ``max_retries + 1`` times, or ``max_retries + 1``
workers died running it): fail the member, or hand it to the arbiters to be replaced.

``worker.on_failure = "replace"`` (the default since schema 3): the worker (or the reaper) publishes a
``FailedEvent`` and marks the member ``ready`` in one transaction, only if the failed job is still the
member's current one and the experiment runs; an arbiter then decides it like a NaN score
(``control.replace``: a donor's checkpoint with explored values, or a fresh start), exactly once per
(member, seq), with the experiment's own rules, plug-ins included, which only arbiters import.
``"fail"``: the member is marked failed, as before.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.failed import MAX_ERROR, FailedEvent
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import ExperimentState, Member, MemberState, Meta
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.state.finish import fail_member

log = logging.getLogger(__name__)


def give_up(r: Any, cfg: Experiment, cmd: SegmentCommand, job: str, error: str, worker: str = "") -> str:
    """The segment ``cmd`` (RQ job ``job``) failed for good: "published" (a FailedEvent is out, the
    arbiters replace the member), "failed" (the member is failed) or "moved on" (not its job any more)."""
    error = error[-MAX_ERROR:]
    if cfg.worker.on_failure != "replace":
        return "failed" if fail_member(r, cfg, cmd.experiment, cmd.member, cmd.seq, error) else "moved on"
    k = Keys(cmd.experiment)
    mkey = k.member(cmd.member)
    ev = FailedEvent(cmd.experiment, cmd.member, cmd.seq, cmd.step, dict(cmd.hparams), error,
                     cmd.start.key if cmd.start else None, cmd.train_s, worker)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(mkey, k.meta)
                h = Member.read(pipe, mkey, "job", "state")
                if h.job != job or h.state not in (MemberState.RUNNING, MemberState.QUEUED):
                    pipe.unwatch()
                    return "moved on"
                if Meta.read(pipe, k.meta, "state").state is not ExperimentState.RUNNING:
                    pipe.unwatch()
                    return "moved on"  # no one decides it: the member stays as it is, like any in an ended run
                pipe.multi()
                pipe.xadd(k.events, ev.stream_fields())
                pipe.hset(mkey, mapping=Member.fields(state=MemberState.READY, error=error))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    log.warning("%s %s seq=%d failed for good; the arbiters replace it", cmd.experiment, cmd.member, cmd.seq)
    return "published"
