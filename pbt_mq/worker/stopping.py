"""One stop policy for every way a worker is asked to stop.

SIGTERM (Kubernetes, ``scancel``, ``docker stop``), SIGINT (Ctrl-C), SIGUSR1 (SLURM's warning
signal: ``--signal=B:USR1@60``) and ``request()`` (an API caller, e.g. a training loop in-process)
all mean the same: take no new segment; finish the one in flight if that can be done within
``grace_s`` (train, save, publish); otherwise abandon it to the reaper, exactly as if the worker
had been killed (its heartbeat expires, the reaper queues the segment again from the same start
checkpoint). A second request abandons at once, and so does a segment whose result could not be
published because Redis does not answer (``reachable`` fails twice in a row, a second apart).
Whatever Redis is doing (down, retrying with backoff), the process is gone by the deadline: a
watchdog thread ends it with ``os._exit``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
IDLE_GRACE_S = 1.0  # no segment in flight: what is left to do is to say goodbye to Redis
EXIT_ABANDONED = 143  # as a process killed by SIGTERM reports it


class StopPolicy:
    def __init__(self, grace_s: float, busy: Callable[[], str], exit_fn: Callable[[int], Any] = os._exit,
                 reachable: Callable[[], bool] | None = None) -> None:
        self.grace_s = grace_s
        self.busy = busy  # what is in flight ("" when idle)
        self.reachable = reachable  # does Redis answer now (quickly, no retries)
        self.exit_fn = exit_fn
        self.event = threading.Event()
        self.deadline: float | None = None
        self._requests = 0
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    def install(self) -> None:
        """Handle the stop signals (main thread only)."""
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, why: str = "requested") -> None:
        """Stop: finish what is in flight within the grace period, else abandon it (see module doc)."""
        with self._lock:
            self._requests += 1
            first = self._requests == 1
        doing = self.busy()
        if not first:
            self._abandon(f"{why} again")
            return
        wait = self.grace_s if doing else min(self.grace_s, IDLE_GRACE_S) + IDLE_GRACE_S
        self.deadline = time.monotonic() + wait
        self.event.set()
        if doing:
            log.warning("stop (%s): finishing %s within %.0f s, else it goes back to the queue", why, doing, wait)
        else:
            log.warning("stop (%s): no new work; exiting", why)
        threading.Thread(target=self._watch, name="pbt-stop-watchdog", daemon=True).start()

    def _watch(self) -> None:
        unreachable, next_probe = 0, time.monotonic()
        while self.deadline is not None:
            now = time.monotonic()
            if now >= self.deadline:
                self._abandon("the grace period is over")
                return
            if self.reachable is not None and self.busy() and now >= next_probe:
                next_probe = now + 1.0
                unreachable = 0 if self.reachable() else unreachable + 1
                if unreachable >= 2:
                    self._abandon("Redis does not answer, so the segment could not be published")
                    return
            time.sleep(min(self.deadline - now, 0.1))

    def _abandon(self, why: str) -> None:
        doing = self.busy()
        if doing:
            log.error("stop: %s; abandoning %s to the reaper (it is queued again from its start checkpoint"
                      " once this worker's heartbeat expires)", why, doing)
        else:
            log.warning("stop: %s; exiting now", why)
        logging.shutdown()
        self.exit_fn(EXIT_ABANDONED)

    def finished(self) -> None:
        """The worker exits on its own: the watchdog has nothing left to do."""
        self.deadline = None
