"""Where a decided segment goes: the shared queue, or (warm routing) the worker holding its model;
and which worker holds its start checkpoint (its job's home, ``broker.jobs.take_job``).

A continuing segment goes to the private queue of the worker that holds the member live
(``QUEUE@ID``, read before the shared one) when nothing waits in the shared queue (a warm start
never jumps a queue of others) and that worker is alive on this queue, idle (or still finishing
this very segment) and has nothing in its own queue; one member per worker. It is one read
outside the transaction: a hint, which the reaper corrects if the worker takes other work.

Every other segment goes to the shared queue, homed at the worker that wrote its start
checkpoint (a continuing member's last worker; an exploit's donor's, named in the donor's scored
checkpoint, ``core.model.ScoredCheckpoint.worker``): that worker holds it in memory (``worker.cache``) and takes it
first when it is free; any other worker takes it when it has nothing of its own or the job has
been passed over long enough. With a population larger than the fleet, most segments then
start without a download.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pbt_mq.broker.cluster import is_cluster
from pbt_mq.broker.jobs import queue_for, queue_key
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.keys import private_queue, worker_key
from pbt_mq.core.model import Action, Heartbeat
from pbt_mq.core.protocol import ReadyEvent

CACHE_MAX = 1024
_NOTHING = object()  # a reply that was an error


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


@dataclass(frozen=True)
class Route:
    queue: str | None = None  # a worker's private queue (warm routing), else the shared one
    home: str = ""  # the worker holding the start checkpoint ("" : unknown)


def routes(r: Any, queues: Queues, cfg: Experiment, exp: str, decided: list[tuple[ReadyEvent, str, str]]) -> dict[str, Route]:
    """member -> where its next segment goes (``decided``: (event, action, the worker that wrote the
    next start checkpoint)); one round trip."""
    out = {ev.member: Route(home=home) for ev, action, home in decided
           if action in (Action.CONTINUE, Action.EXPLOIT) and home}
    # only a continuing member goes to a private queue: sending an exploit to its donor's worker would
    # gather the copies of the best members on one worker, whose members then fall behind in steps
    homed = [(ev, home) for ev, action, home in decided if action == Action.CONTINUE and home == ev.worker]
    if not homed or is_cluster(r):
        return out
    fields = Heartbeat.names("queue", "current")
    pipe = r.pipeline(transaction=False)
    pipe.llen(queues.get(cfg, exp).key)
    for _, home in homed:
        pipe.hmget(worker_key(home), *fields)
        pipe.llen(queue_key(private_queue(cfg.queue, home)))
    # a hint: a key someone replaced by another type routes nothing, it fails no decision
    got = [_NOTHING if isinstance(x, Exception) else x for x in pipe.execute(raise_on_error=False)]
    out.update(_warm(cfg, exp, homed, got, fields))
    return out


def _warm(cfg: Experiment, exp: str, homed: list[tuple[ReadyEvent, str]], got: list[Any],
          fields: tuple[str, ...]) -> dict[str, Route]:
    """The continuing members sent to the private queue of their idle worker (nothing waits in the shared one)."""
    waiting, *rows = got
    if waiting or any(x is _NOTHING for x in rows):
        return {}
    out: dict[str, Route] = {}
    taken: set[str] = set()
    for (ev, home), row, own in zip(homed, rows[::2], rows[1::2], strict=True):
        beat = Heartbeat.pick(fields, row)
        idle = beat.current in ("", f"{exp}/{ev.member}/{ev.seq}")
        if beat.queue == cfg.queue and idle and not own and home not in taken:
            out[ev.member] = Route(private_queue(cfg.queue, home), home)
            taken.add(home)
    return out
