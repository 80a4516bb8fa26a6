"""Synchronous rounds (``exploit.synch = true``): a ready point is decided once every live member reported it.

``decide.lua`` records each score as it comes and notes the member's ready point in ``pbt:{EXP}:reached``
(live members only: a member that is done or failed leaves it, so it never blocks a round); while a live
member's last ready point is below the event's, it replies "wait". The member is then *parked*, in the
transaction that acknowledges its event: its state becomes ``waiting``, the event is kept in
``pbt:{EXP}:parked`` and its ready point in ``pbt:{EXP}:waiting``. No next segment is queued, so no
member starts a segment past its round before the round is complete.

The last report completes the round: ``decide.lua`` ranks it at once, and the arbiter that saw it then
decides every parked member of the round the same way (``Arbiter.flush_rounds``: the parked events go
through the usual decision, in rounds of three round trips), each on the full board of that ready point.
Whatever else completes a round (a member failed, finished, or replaced elsewhere; two last reports
racing; an arbiter that died between parking and deciding) is found by the timer: every arbiter looks
each second for parked members whose ready point every live member reached. Everything is in Redis,
in the experiment's slot, so any replica may do it after a crash; each (member, seq) is decided once
(``decide.lua``'s seq check, the member's WATCH), and parking twice is harmless.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import msgpack

from pbt_mq.broker.scripts import text
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Member, MemberState
from pbt_mq.core.protocol import ProtocolError, ReadyEvent, safe_unpackb
from pbt_mq.state.finish import fail_member
from pbt_mq.state.recovery import dead_letter

log = logging.getLogger(__name__)
MAX_TRIES = 5  # a parked event whose decision keeps failing (a plug-in raising) is dead-lettered after this
Entry = tuple[bytes, dict[bytes, bytes]]


def park(pipe: Any, cfg: Experiment, entry_id: bytes, ev: ReadyEvent, member: dict[str, Any]) -> None:
    """Inside the decision's MULTI: the member waits for its round (``member``: its scored-checkpoint fields)."""
    k = Keys(ev.experiment)
    pipe.hset(k.member(ev.member), mapping=Member.fields(**member, state=MemberState.WAITING))
    pipe.zadd(k.waiting, {ev.member: cfg.ready_point(ev.step, ev.train_s)})
    pipe.hset(k.parked, ev.member, msgpack.packb({"id": text(entry_id), "msg": ev.encode()}, use_bin_type=True))


def unpark(pipe: Any, exp: str, member: str) -> None:
    """Inside a decision's MULTI: the member is decided, it waits no more."""
    k = Keys(exp)
    pipe.zrem(k.waiting, member)
    pipe.hdel(k.parked, member)


def due(r: Any, exp: str) -> list[Entry]:
    """The parked events whose round is complete (every live member reached their ready point), as
    stream entries (id, fields) ready to be decided."""
    k = Keys(exp)
    slowest = r.zrange(k.reached, 0, 0, withscores=True)
    upto = "+inf" if not slowest else repr(slowest[0][1])
    members = r.zrangebyscore(k.waiting, "-inf", upto)
    if not members:
        return []
    out = []
    for m, raw in zip(members, r.hmget(k.parked, *members), strict=True):
        if raw is None:
            r.zrem(k.waiting, m)  # decided meanwhile (its unpark raced this read)
            continue
        try:
            rec = safe_unpackb(raw)
            out.append((str(rec["id"]).encode(), {b"msg": bytes(rec["msg"]), b"member": m}))
        except (ProtocolError, KeyError, TypeError) as exc:
            log.error("%s %s: unreadable parked event (%s); dropped", exp, text(m), exc)
            r.zrem(k.waiting, m)
            r.hdel(k.parked, m)
    return out


class Tries:
    """Parked events whose decision failed (an error, not a wait), counted per (experiment, member): the
    MAX_TRIES-th is dead-lettered with the error and its member failed, as a pending event would be."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.count: Counter[tuple[str, str]] = Counter()

    def failed(self, cfg: Experiment, exp: str, entry: Entry, error: str) -> None:
        entry_id, fields = entry
        member = text(fields[b"member"])
        self.count[(exp, member)] += 1
        if self.count[(exp, member)] < MAX_TRIES:
            return
        del self.count[(exp, member)]
        k = Keys(exp)
        reason = f"deciding its parked event failed {MAX_TRIES} times: {error}"
        dead_letter(self.r, k.dead, reason=reason, source=k.parked, entry=entry_id, raw=fields[b"msg"][:64 << 10])
        seq = ReadyEvent.decode(fields[b"msg"]).seq
        pipe = self.r.pipeline(transaction=True)
        unpark(pipe, exp, member)
        pipe.execute()
        fail_member(self.r, cfg, exp, member, seq, f"its ready event was dead-lettered: {reason}")

    def decided(self, exp: str, member: str) -> None:
        self.count.pop((exp, member), None)
