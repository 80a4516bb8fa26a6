"""What keeps a daemon's loop alive: Redis trouble is waited out with backoff, anything else is said once.

Redis restarting, failing over or out of memory: every pass retries after a growing pause (0.25 s to 5 s),
and says so each time. WRONGTYPE or NOGROUP (a key replaced by another type, the events stream deleted):
the loop's ``repair`` moves the culprit aside (control.quarantine) and the next pass goes on at once; what
it cannot repair is said once, like any other error. Any other error is a record nobody expected (written by hand with redis-cli, by
another release) read where no check caught it: it must not stop every experiment of the fleet, so it is
logged once per distinct message, without a traceback, and the next pass goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from pbt_mq.broker.cluster import REDIS_ERRORS

log = logging.getLogger(__name__)


class LoopGuard:
    """Backoff and once-only reporting for one daemon loop (``control.arbiter.Arbiter.run``)."""

    def __init__(self, name: str, halt: threading.Event, first_s: float = 0.25, cap_s: float = 5.0,
                 repair: Callable[[], int] | None = None) -> None:
        self.name = name
        self.repair = repair
        self.halt = halt
        self.first_s = first_s
        self.cap_s = cap_s
        self.backoff_s = first_s
        self.said: set[str] = set()

    def ok(self) -> None:
        self.backoff_s = self.first_s

    def failed(self, exc: BaseException) -> None:
        """Report ``exc`` (Redis: every time; anything else: once) and wait before the next pass."""
        if misplaced_key(exc) and self.repair is not None and self.repair():
            return  # a key of another type (or a lost group) moved aside and rebuilt: go on now
        if isinstance(exc, redis.ResponseError):
            self._once(f"Redis refused a command ({exc})")
        elif isinstance(exc, REDIS_ERRORS):
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, self.backoff_s)
        else:
            self._once(f"{type(exc).__name__}: {exc}")
        self.halt.wait(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, self.cap_s)

    def _once(self, said: str) -> None:
        if said not in self.said:
            self.said.add(said)
            log.error("%s: skipped a pass after an unexpected %s (a record written by hand?); going on (said once)",
                      self.name, said)


def misplaced_key(exc: BaseException) -> bool:
    """Did Redis refuse a command because a key holds another type, or a stream lost its group?"""
    return isinstance(exc, redis.ResponseError) and ("WRONGTYPE" in str(exc) or "NOGROUP" in str(exc))  # (in a script)
