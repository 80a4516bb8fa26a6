"""Experiments an arbiter cannot decide, and what becomes of them.

An arbiter that cannot build an experiment's rules (a plug-in whose module is not on its allowlist or
fails to import, a built-in rule's missing requirement such as PB2's numpy) does not read that
experiment's events: another replica may be able to. It says so once, in ``pbt:{EXP}:refused``
(arbiter -> why; ``pbt status`` shows it). If an event then waits undelivered longer than the grace
(``max(--claim-idle-ms, 10 s)``), no arbiter is deciding the experiment, and every refusing arbiter
marks it failed with its reason, so it ends with that line instead of hanging. Arbiters with different
allowlists are fine as long as one of them takes the experiment's events.
"""

from __future__ import annotations

import logging
from typing import Any

from pbt_mq.broker.scripts import set_state_if
from pbt_mq.core.ids import entry_ms, now_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import ExperimentState

log = logging.getLogger(__name__)
MIN_GRACE_MS = 10_000


class Refusals:
    def __init__(self, r: Any, name: str, claim_idle_ms: int) -> None:
        self.r = r
        self.name = name
        self.grace_ms = max(claim_idle_ms, MIN_GRACE_MS)
        self.reasons: dict[str, str] = {}  # experiment -> why this arbiter cannot decide it

    def note(self, exp: str, reason: str) -> None:
        """This arbiter cannot decide ``exp``: said once, in the log and in Redis."""
        if self.reasons.get(exp) == reason:
            return
        self.reasons[exp] = reason
        log.error("experiment %s: this arbiter leaves its events to others: %s", exp, reason)
        self.r.hset(Keys(exp).refused, self.name, reason)

    def keep(self, running: set[str]) -> None:
        """Forget experiments that ended (or this arbiter can decide now)."""
        self.reasons = {e: why for e, why in self.reasons.items() if e in running}

    def check(self) -> None:
        """Fail every refused experiment whose oldest undelivered event waited longer than the grace."""
        for exp, reason in list(self.reasons.items()):
            waited = self._undelivered_ms(exp)
            if waited is not None and waited > self.grace_ms:
                why = f"no arbiter decided its events for {waited / 1000:.0f} s; {self.name}: {reason}"
                if set_state_if(self.r, Keys(exp).meta, ExperimentState.RUNNING, ExperimentState.FAILED, why[:2000],
                                now_ms()):
                    log.error("experiment %s failed: %s", exp, why)

    def _undelivered_ms(self, exp: str) -> int | None:
        """How long the oldest event no arbiter has read has waited (None: there is none)."""
        stream = Keys(exp).events
        last = "0-0"
        for group in self.r.xinfo_groups(stream):
            if group["name"] in (GROUP, GROUP.encode()):
                d = group["last-delivered-id"]
                last = d.decode() if isinstance(d, bytes) else d
        nxt = self.r.xrange(stream, f"({last}", "+", count=1)
        return now_ms() - entry_ms(nxt[0][0]) if nxt else None
