"""What keeps a daemon's loop alive: Redis trouble is waited out with backoff, anything else is said once.

Redis restarting, failing over or out of memory: every pass retries after a growing pause (0.25 s to 5 s),
and says so each time. Any other error is a record nobody expected (written by hand with redis-cli, by
another release) read where no check caught it: it must not stop every experiment of the fleet, so it is
logged once per distinct message, without a traceback, and the next pass goes on.
"""

from __future__ import annotations

import logging
import threading

import redis
from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)


class LoopGuard:
    """Backoff and once-only reporting for one daemon loop (``control.arbiter.Arbiter.run``)."""

    def __init__(self, name: str, halt: threading.Event, first_s: float = 0.25, cap_s: float = 5.0) -> None:
        self.name = name
        self.halt = halt
        self.first_s = first_s
        self.cap_s = cap_s
        self.backoff_s = first_s
        self.said: set[str] = set()

    def ok(self) -> None:
        self.backoff_s = self.first_s

    def failed(self, exc: BaseException) -> None:
        """Report ``exc`` (Redis: every time; anything else: once) and wait before the next pass."""
        if isinstance(exc, redis.RedisError | RedisClusterException):
            log.warning("%s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, self.backoff_s)
        else:
            said = f"{type(exc).__name__}: {exc}"
            if said not in self.said:
                self.said.add(said)
                log.error("%s: skipped a pass after an unexpected %s (a record written by hand?); going on "
                          "(said once)", self.name, said)
        self.halt.wait(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, self.cap_s)
