"""Queueing a member's segment: its RQ job and the member hash that names it, in one MULTI."""

from __future__ import annotations

from typing import Any

from pbt_mq.broker.jobs import enqueue
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys, job_id
from pbt_mq.core.model import Member, MemberState
from pbt_mq.core.protocol import SegmentCommand


def enqueue_segment(pipe: Any, queue: Any, cfg: Experiment, cmd: SegmentCommand, suffix: str = "",
                    member: dict[str, Any] | None = None, home: str = "") -> str:
    """Queue ``cmd`` inside ``pipe`` (already in MULTI) and make it the member's current job;
    ``member``: more Member fields for the same HSET; ``home``: the worker holding its start checkpoint.

    The member hash keeps the job id and the encoded command, so a reaper can queue the very
    same segment again if the worker running it dies, and a stale copy can recognise itself.
    """
    jid = job_id(cmd.experiment, cmd.member, cmd.seq) + suffix
    wire = cmd.encode()
    mkey = Keys(cmd.experiment).member(cmd.member)
    pipe.hset(mkey, mapping=Member.fields(**{**(member or {}), "state": MemberState.QUEUED, "seq": cmd.seq,
                                             "job": jid, "cmd": wire, "queued_ms": now_ms(), "queue": queue.name}))
    pipe.hdel(mkey, "limbo_ms")
    enqueue(pipe, queue, jid, wire, cfg.worker.segment_timeout_s,
            f"{cmd.experiment} {cmd.member} seq={cmd.seq} step={cmd.step} ({cmd.why})", home)
    return jid
