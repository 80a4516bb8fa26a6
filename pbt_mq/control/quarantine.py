"""Keys that hold another Redis type than any release writes there (``SET`` over a member's hash, a
string where the events stream was): Redis answers WRONGTYPE to every command on them, for every
reader, and one such key in one blocking XREADGROUP over every experiment's stream would stall the
whole fleet. The arbiter sweeps for them when Redis answers WRONGTYPE (or NOGROUP: the stream was
deleted and re-created by a worker's XADD, without the arbiters' group). Each one is moved aside,
not deleted (RENAME to ``pbt:{EXP}:quarantine:NAME:MS``, in the experiment's slot, so it works on a
cluster), logged with its key, and what depends on it rebuilt: the events stream and its group; a
member whose hash was moved is failed with the reason, so the rest of its experiment goes on; a
member whose ready event went with the old stream trains that segment again (``reaper.requeue``,
not counted as a retry): the new stream holds no event for it, and nothing else would.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis

from pbt_mq.config.experiment import Experiment
from pbt_mq.control.reaper import Orphan, requeue
from pbt_mq.core.ids import member_ids, now_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Member, MemberState
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


def misplaced(r: Any, exp: str) -> list[tuple[str, str, str]]:
    """(key, its type, the type expected) for every key of ``exp`` that holds another type."""
    k = Keys(exp)
    glob = re.sub(r"([*?\[\]\\])", r"\\\1", k.prefix)  # ids are checked, but a glob never widens
    keys = sorted(key.decode(errors="replace") if isinstance(key, bytes) else key
                  for key in r.scan_iter(match=f"{glob}:*", count=1000))
    keys = [key for key in keys if expected_type(k, key)]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    found = [(key, t.decode() if isinstance(t, bytes) else str(t)) for key, t in zip(keys, pipe.execute(), strict=True)]
    return [(key, t, expected_type(k, key) or "") for key, t in found if t not in ("none", expected_type(k, key))]


def repair(r: Any, exp: str, cfg: Experiment) -> int:
    """Move ``exp``'s misplaced keys aside and rebuild what needs them: how many keys it moved or made."""
    k = Keys(exp)
    moved = []
    for key, kind, want in misplaced(r, exp):
        aside = f"{k.prefix}:quarantine:{key[len(k.prefix) + 1:]}:{now_ms()}"
        try:
            r.rename(key, aside)
        except redis.ResponseError:  # gone meanwhile (another arbiter moved it first)
            continue
        moved.append(key)
        log.error("%s: %s held a %s where a %s belongs (written by hand?); moved aside to %s", exp, key, kind, want,
                  aside)
        member = key[len(k.prefix) + len(":member:"):] if key.startswith(k.prefix + ":member:") else None
        if member:
            fail_member(r, cfg, exp, member, -1, f"its record {key} held a {kind}, not a hash; moved aside to {aside}"
                                                 "; the member is failed so that the rest of the experiment goes on")
    lost = ensure_group(r, k) or k.events in moved
    return len(moved) + int(lost) + (requeue_lost_events(r, exp, cfg) if lost else 0)


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
