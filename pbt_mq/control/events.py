"""Events the arbiter cannot decide: refused ones are dead-lettered at once; one that fails with an
unexpected error (a bug, a plug-in raising) stays pending and is retried, then dead-lettered and its
member failed, so the experiment still ends."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.failed import decode_event
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.protocol import ProtocolError
from pbt_mq.state.finish import fail_member
from pbt_mq.state.recovery import dead_letter

log = logging.getLogger(__name__)
DEAD_RAW_MAX = 64 << 10
MAX_DELIVERIES = 5  # an event failing unexpectedly this many times is dead-lettered


def experiment_of(stream: bytes | str) -> str:
    """The experiment id in an events stream's name (its hash tag)."""
    s = stream.decode() if isinstance(stream, bytes) else stream
    return s[s.index("{") + 1 : s.rindex("}")]


class EventErrors:
    def __init__(self, r: Any, stats: Counter[str]) -> None:
        self.r = r
        self.stats = stats
        self.last: dict[bytes, str] = {}  # entry id -> its last unexpected error (read by control.synch's Tries)

    def refuse(self, exp: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> str:
        """A malformed or forged event: dead-lettered with the reason and acknowledged."""
        k = Keys(exp)
        self.dead_letter(k, entry_id, fields, reason)
        self.r.xack(k.events, GROUP, entry_id)
        return "dead"

    def poison(self, exp: str, entry_id: bytes, fields: dict[bytes, bytes], exc: Exception,
               config: Callable[[], Experiment]) -> str:
        """Left pending (claimed again after ``claim_idle_ms``) until MAX_DELIVERIES, then dead."""
        k = Keys(exp)
        info = self.r.xpending_range(k.events, GROUP, min=entry_id, max=entry_id, count=1)
        n = int(info[0]["times_delivered"]) if info else 1
        if not info:  # not pending: a parked event (exploit.synch), whose tries are counted where it is parked
            self.last[entry_id] = f"{type(exc).__name__}: {exc}"
            if len(self.last) > 10_000:
                self.last.clear()
        if n < MAX_DELIVERIES:
            log.error("%s: event %s left pending after an unexpected %s: %s (delivery %d of %d)",
                      exp, entry_id, type(exc).__name__, exc, n, MAX_DELIVERIES)
            log.debug("the traceback", exc_info=exc)
            return "error"
        reason = f"deciding it failed {n} times: {type(exc).__name__}: {exc}"
        log.error("%s: event %s: %s; dead-lettered", exp, entry_id, reason)
        self.dead_letter(k, entry_id, fields, reason)
        try:
            ev = decode_event(fields)
            fail_member(self.r, config(), exp, ev.member, ev.seq, f"its ready event was dead-lettered: {reason}")
        except ProtocolError:
            pass
        self.r.xack(k.events, GROUP, entry_id)
        return "dead"

    def dead_letter(self, k: Keys, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering %s %s: %s", k.events, entry_id, reason)
        raw = fields.get(b"msg") or b""
        dead_letter(self.r, k.dead, reason=reason, source=k.events, entry=entry_id, raw=raw[:DEAD_RAW_MAX])
