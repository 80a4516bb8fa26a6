"""Keys that hold another Redis type than any release writes there (``SET`` over a member's hash, a
string where the events stream was): Redis answers WRONGTYPE to every command on them, for every
reader, and one such key in one blocking XREADGROUP over every experiment's stream would stall the
whole fleet. The arbiter checks the experiment's keys (listed, not scanned) when Redis answers WRONGTYPE (or
NOGROUP: the stream was deleted and re-created by a worker's XADD, without the arbiters' group).
Each one is moved aside, not deleted (``move_aside.lua``: checked and renamed atomically, to
``pbt:{EXP}:quarantine:NAME:MS`` in the experiment's slot, so it works on a cluster and two arbiters
move it once), logged with its key, and what depends on it rebuilt: the events stream and its group;
a member whose hash was moved is failed with the reason (or, if its lineage says it had ended, its
end is written back), so the rest of its experiment goes on; a moved meta fails the experiment with
the reason; a member whose ready event went with the old stream trains that segment again
(``reaper.requeue``, not counted as a retry): the new stream holds no event for it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis

from pbt_mq.broker.scripts import move_aside
from pbt_mq.config.experiment import Experiment
from pbt_mq.control.reaper import Orphan, requeue
from pbt_mq.core.ids import member_ids, now_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Member, MemberState, Meta
from pbt_mq.state.finish import fail_member

log = logging.getLogger(__name__)
HASH, ZSET, STREAM, LIST = "hash", "zset", "stream", "list"
FIXED = {"meta": HASH, "scores": ZSET, "ckpts": HASH, "windows": HASH, "parents": HASH, "uploading": ZSET,
         "stored": ZSET, "events": STREAM, "lineage": STREAM, "archive": LIST, "dead": STREAM, "tracking": HASH,
         "runs": HASH, "eligible": ZSET, "waiting": ZSET, "parked": HASH, "refused": HASH, "boards": ZSET,
         "reached": ZSET}
PATTERNS = ((re.compile(r"member:[^:]+"), HASH), (re.compile(r"board:-?\d+"), ZSET),
            (re.compile(r"(board:-?\d+|scores|eligible):vectors"), HASH))


def expected_type(k: Keys, key: str) -> str | None:
    """The type a release writes at ``key`` (one of the experiment's), or None for a name it never writes."""
    name = key[len(k.prefix) + 1:] if key.startswith(k.prefix + ":") else ""
    if name in FIXED:
        return FIXED[name]
    return next((kind for pattern, kind in PATTERNS if pattern.fullmatch(name)), None)


def candidates(r: Any, exp: str, cfg: Experiment) -> list[str]:
    """Every key a release writes for ``exp``: the fixed ones, the population's members and the boards
    the boards zset names. Listed, never SCANned: a repair costs one pipelined round trip, not the keyspace."""
    k = Keys(exp)
    keys = [f"{k.prefix}:{name}" for name in FIXED] + [k.member(m) for m in member_ids(cfg.population)]
    keys += [Keys.vectors(k.scores), Keys.vectors(k.eligible)]
    try:
        boards = [int(float(b)) for b in r.zrange(k.boards, 0, -1)]
    except (redis.ResponseError, ValueError):  # boards itself misplaced (moved first) or junk members
        boards = []
    return keys + [x for at in boards for x in (k.board(at), Keys.vectors(k.board(at)))]


def misplaced(r: Any, exp: str, cfg: Experiment) -> list[tuple[str, str, str]]:
    """(key, its type, the type expected) for every key of ``exp`` that holds another type."""
    k = Keys(exp)
    keys = candidates(r, exp, cfg)
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    found = [(key, t.decode() if isinstance(t, bytes) else str(t)) for key, t in zip(keys, pipe.execute(), strict=True)]
    return [(key, t, expected_type(k, key) or "") for key, t in found if t not in ("none", expected_type(k, key))]


def repair(r: Any, exp: str, cfg: Experiment) -> int:
    """Move ``exp``'s misplaced keys aside and rebuild what needs them: how many keys it moved or made.
    Each move is atomic and conditional (move_aside.lua): of two arbiters repairing at once, one moves a
    key and acts on it; the other finds it absent or already rebuilt and does nothing."""
    k = Keys(exp)
    moved: dict[str, tuple[str, str]] = {}
    for key, _, want in misplaced(r, exp, cfg):
        aside = f"{k.prefix}:quarantine:{key[len(k.prefix) + 1:]}:{now_ms()}"
        kind = move_aside(r, key, aside, want)
        if kind:
            moved[key] = (kind, aside)
            log.error("%s: %s held a %s where a %s belongs (written by hand?); moved aside to %s", exp, key, kind,
                      want, aside)
    if k.meta in moved:  # its config went with it: the experiment cannot go on, and says why
        kind, aside = moved[k.meta]
        r.hset(k.meta, mapping=Meta.fields(state=ExperimentState.FAILED, done_ms=now_ms(), reason=(
            f"{k.meta} held a {kind}, not a hash (written by hand?); moved aside to {aside}; the experiment "
            "cannot go on without its record")))
    for m in member_ids(cfg.population):
        if k.member(m) in moved:
            kind, aside = moved[k.member(m)]
            member_lost(r, cfg, exp, m, f"its record {k.member(m)} held a {kind}, not a hash; moved aside to {aside}")
    lost = ensure_group(r, k) or k.events in moved
    return len(moved) + int(lost) + (requeue_lost_events(r, exp, cfg) if lost else 0)


def member_lost(r: Any, cfg: Experiment, exp: str, member: str, why: str) -> None:
    """A member whose hash was moved aside: failed, so the rest goes on, unless its lineage says it had
    already ended (then its end is written back, and not counted twice)."""
    k = Keys(exp)
    ended = last_action(r, k, member)
    if ended in (Action.DONE, Action.FAILED):
        r.hset(k.member(member), mapping=Member.fields(state=MemberState(ended.value), error=why, updated_ms=now_ms()))
        return
    fail_member(r, cfg, exp, member, -1, f"{why}; the member is failed so that the rest of the experiment goes on")


def last_action(r: Any, k: Keys, member: str, batch: int = 1000) -> Action | None:
    """The action of ``member``'s newest record in the lineage still in Redis (None: none there)."""
    end = "+"
    while True:
        entries = r.xrevrange(k.lineage, end, "-", count=batch)
        for entry_id, fields in entries:
            rec = Lineage.from_entry(entry_id, fields)
            if rec.member == member and not rec.problems:
                return rec.action
        if len(entries) < batch:
            return None
        end = "(" + (entries[-1][0].decode() if isinstance(entries[-1][0], bytes) else entries[-1][0])


def requeue_lost_events(r: Any, exp: str, cfg: Experiment) -> int:
    """Members that are ready, with no event for their seq in the (new) stream nor a parked one: their
    segment is queued again from its start checkpoint. How many."""
    k = Keys(exp)
    fields = Member.names("state", "seq", "job")
    pipe = r.pipeline(transaction=False)
    ids = member_ids(cfg.population)
    for m in ids:
        pipe.hmget(k.member(m), *fields)
    pipe.xrange(k.events)
    pipe.hkeys(k.parked)
    *rows, entries, parked = pipe.execute()
    have = {(e.get(b"member", b"").decode(errors="replace"), e.get(b"seq", b"").decode(errors="replace"))
            for _, e in entries}
    have |= {(p.decode(errors="replace"), "") for p in parked}
    done = 0
    for m, row in zip(ids, rows, strict=True):
        h = Member.pick(fields, row)
        if h.problems or h.state is not MemberState.READY or (m, str(h.seq)) in have or (m, "") in have:
            continue
        if requeue(r, exp, cfg, Orphan(m, h.job, MemberState.READY, "its ready event was lost with the events "
                                                                       "stream"), count=False) == "requeued":
            done += 1
    return done


def ensure_group(r: Any, k: Keys) -> bool:
    """The arbiters' group on the events stream (re-created with the stream if a hand deleted it).
    True if it had to be created. From id 0: an event read again is a duplicate its decision drops."""
    try:
        r.xgroup_create(k.events, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    log.warning("%s: the arbiters' group on %s was missing (the stream was deleted?); created again", k.experiment,
                k.events)
    return True
