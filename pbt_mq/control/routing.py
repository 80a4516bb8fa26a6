"""Where a decided segment goes: the shared queue, or (warm routing) the worker holding its model.

A continuing segment goes to the private queue of the worker that holds the member live
(``QUEUE@ID``, read before the shared one) when nothing waits in the shared queue (a warm start
never jumps a queue of others) and that worker is alive on this queue, idle (or still finishing
this very segment) and has nothing in its own queue; one member per worker. It is one read
outside the transaction: a hint, which the reaper corrects if the worker takes other work.
"""

from __future__ import annotations

from typing import Any

from pbt_mq.broker.cluster import is_cluster
from pbt_mq.broker.jobs import queue_for, queue_key
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.keys import private_queue, worker_key
from pbt_mq.core.model import Action, Heartbeat
from pbt_mq.core.protocol import ReadyEvent

CACHE_MAX = 1024


class Queues:
    """RQ queue objects built once (RQ's constructor is not free)."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self._queues: dict[tuple[str, str], Any] = {}

    def get(self, cfg: Experiment, exp: str, name: str | None = None) -> Any:
        """The queue for ``exp``'s segments (or the one ``name``d, a worker's own)."""
        key = (name or cfg.queue, exp if is_cluster(self.r) else "")
        if key not in self._queues:
            if len(self._queues) > CACHE_MAX:
                self._queues.clear()
            self._queues[key] = queue_for(self.r, key[0], exp)
        return self._queues[key]


def homes(r: Any, queues: Queues, cfg: Experiment, exp: str, decided: list[tuple[ReadyEvent, str]]) -> dict[str, str]:
    """member -> the private queue to send its continuing segment to (``decided``: (event, action))."""
    cands = [ev for ev, action in decided if action == Action.CONTINUE and ev.worker]
    if not cands or is_cluster(r):
        return {}
    fields = Heartbeat.names("queue", "current")
    pipe = r.pipeline(transaction=False)
    pipe.llen(queues.get(cfg, exp).key)
    for ev in cands:
        pipe.hmget(worker_key(ev.worker), *fields)
        pipe.llen(queue_key(private_queue(cfg.queue, ev.worker)))
    waiting, *rows = pipe.execute()
    if waiting:
        return {}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for ev, row, own in zip(cands, rows[::2], rows[1::2], strict=True):
        beat = Heartbeat.pick(fields, row)
        idle = beat.current in ("", f"{exp}/{ev.member}/{ev.seq}")
        if beat.queue == cfg.queue and idle and not own and ev.worker not in taken:
            out[ev.member] = private_queue(cfg.queue, ev.worker)
            taken.add(ev.worker)
    return out
