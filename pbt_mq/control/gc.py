"""Checkpoint garbage collection: the store stays bounded, and nothing anyone needs is deleted.

Workers record every key in ``pbt:{EXP}:uploading`` *before* uploading it, and move it to
``pbt:{EXP}:stored`` in the same transaction that publishes its event. A collection
deletes stored checkpoints (and uploads abandoned for longer than ``gc.min_age_s``, the
leftovers of a worker that died mid-upload) that are not needed by:

* the leaderboard (``pbt:{EXP}:ckpts``: every member's scored checkpoint, i.e. every donor,
  the best member's included), and the lineages these descend from (``pbt:{EXP}:parents``,
  up to ``gc.lineage_depth`` ancestors; by default all: lineages that died out through
  exploitation are deleted, live ones never are, so the best member's ancestry stays intact),
* any member's own latest checkpoint, or the start of its queued or running segment,
* any event not yet decided (pending in the consumer group, or not yet delivered).

With ``lineage_depth = 0`` the store holds about one checkpoint per member, plus the superseded
ones that queued exploits still start from, plus the ones in flight: population + k.
Every arbiter runs it; two collections at once delete the same keys, which is harmless.
"""

from __future__ import annotations

import logging
from typing import Any

from pbt_mq.broker.scripts import call as call_script
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.ids import member_ids, now_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Member, MemberState, ScoredCheckpoint
from pbt_mq.core.protocol import ProtocolError, ReadyEvent, SegmentCommand
from pbt_mq.store.base import Store, StoreError

log = logging.getLogger(__name__)


def needed(r: Any, exp: str, cfg: Experiment) -> set[str]:
    """Read where a checkpoint comes from before where it goes (event, then member, then
    leaderboard), so one that a decision moves meanwhile is seen at least once."""
    k = Keys(exp)
    pending = undecided(r, exp)
    keep = set()
    fields = Member.names("ckpt_key", "cmd", "state")
    pipe = r.pipeline(transaction=False)
    for m in member_ids(cfg.population):
        pipe.hmget(k.member(m), *fields)
    for row in pipe.execute():
        member = Member.pick(fields, row)
        if member.ckpt_key:
            keep.add(member.ckpt_key)
        if member.cmd and member.state in (MemberState.QUEUED, MemberState.RUNNING):  # its segment starts from it
            try:
                cmd = SegmentCommand.decode(member.cmd)
            except ProtocolError:
                continue
            if cmd.start:
                keep.add(cmd.start.key)
    keep.update(rec.key for raw in r.hvals(k.ckpts) if (rec := ScoredCheckpoint.read(raw)) is not None)
    if cfg.gc.lineage_depth != 0 and keep:
        keep.update(k.decode() for k in call_script(r, "ancestry", [Keys(exp).parents], [cfg.gc.lineage_depth, *keep]))
    return keep | pending


def undecided(r: Any, exp: str) -> set[str]:
    """Checkpoints of events the arbiters have not acknowledged yet (or not even read)."""
    k = Keys(exp)
    groups = {g["name"]: g for g in r.xinfo_groups(k.events)}
    group = groups.get(GROUP.encode()) or groups.get(GROUP)
    start = f"({group['last-delivered-id'].decode()}" if group else "-"
    pending = r.xpending(k.events, GROUP) if group else None
    if pending and pending.get("pending"):
        start = pending["min"].decode() if isinstance(pending["min"], bytes) else pending["min"]
    out = set()
    for _, fields in r.xrange(k.events, start, "+"):
        try:
            out.add(ReadyEvent.decode(fields.get(b"msg")).checkpoint.key)
        except ProtocolError:
            continue
    return out


def collect(r: Any, exp: str, cfg: Experiment, store: Store, min_age_s: float | None = None) -> int:
    """Delete what no one needs; returns how many checkpoints were deleted."""
    k = Keys(exp)
    age_s = cfg.gc.min_age_s if min_age_s is None else min_age_s
    pipe = r.pipeline(transaction=True)
    pipe.zrange(k.stored, 0, -1)
    pipe.zrangebyscore(k.uploading, "-inf", now_ms() - age_s * 1000)
    stored, abandoned = pipe.execute()
    old = [key.decode() for key in stored + abandoned]
    if not old:
        return 0
    keep = needed(r, exp, cfg)
    doomed = [key for key in old if key not in keep]
    deleted = []
    for key in doomed:
        try:
            store.delete(key)
            deleted.append(key)
        except StoreError as exc:  # try again next time
            log.warning("gc %s: cannot delete %s: %s", exp, key, exc)
    if deleted:
        pipe = r.pipeline(transaction=False)
        pipe.zrem(k.stored, *deleted)
        pipe.zrem(k.uploading, *deleted)
        pipe.hdel(k.parents, *deleted)
        pipe.execute()
        log.info("gc %s: deleted %d checkpoints, %d kept", exp, len(deleted), len(old) - len(deleted))
    return len(deleted)
