"""The stateless arbiter: a consumer in the ``arbiters`` group of every running experiment's events.

For each ``ready`` event: validate it (else dead-letter it); WATCH the member's hash;
``decide.lua`` records the score and picks the donor from the sorted set in O(log n)
(``control.decide``); then one MULTI/EXEC writes the member, appends the lineage record, queues
the member's next segment and XACKs the event (``control.commit``): three round trips, whatever
the population size. The events one read returns are decided in rounds of distinct members, in
those same three round trips per round. Every replica is the same; kill any of them and the
others reclaim its pending events. Housekeeping runs on timers (``control.maintenance``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import redis

from pbt_mq.broker.cluster import POLL_S, is_cluster
from pbt_mq.broker.pipes import evalsha_many
from pbt_mq.broker.scripts import call as call_script
from pbt_mq.config.experiment import Experiment
from pbt_mq.control.commit import Committer, Decided
from pbt_mq.control.decide import Decider
from pbt_mq.control.events import EventErrors, experiment_of
from pbt_mq.control.guard import LoopGuard
from pbt_mq.control.maintenance import Maintenance
from pbt_mq.control.pyrule import pick_in_python
from pbt_mq.control.refusals import Refusals
from pbt_mq.control.replace import Replacer
from pbt_mq.control.routing import Queues
from pbt_mq.control.synch import Tries, due
from pbt_mq.core.failed import FailedEvent, decode_event, is_failed
from pbt_mq.core.hooks import Hooks
from pbt_mq.core.ids import entry_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Lineage
from pbt_mq.core.protocol import ProtocolError, ReadyEvent
from pbt_mq.rules.plugins import PluginError
from pbt_mq.rules.registry import RuleError
from pbt_mq.state.archive import readable
from pbt_mq.state.experiment import load_config, running_experiments

log = logging.getLogger(__name__)
Entry = tuple[bytes, dict[bytes, bytes]]
ROUNDS_S = 1.0  # exploit.synch: how often every arbiter looks for complete rounds nobody decided


class Arbiter:
    def __init__(self, r: Any, name: str | None = None, block_ms: int = 1000, batch: int = 128,
                 claim_idle_ms: int = 30_000, refresh_s: float = 1.0, reap_interval_s: float = 2.0,
                 reap_grace_ms: int = 10_000, events_retention_s: float = 5.0, hooks: Hooks | None = None):
        self.r = r
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms = block_ms
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.refresh_s = refresh_s
        self.configs: dict[str, Experiment] = {}
        self.deciders: dict[str, Decider] = {}
        self.stats: Counter[str] = Counter()
        self.hooks = hooks or Hooks()
        self.committer = Committer(r, Queues(r))
        self.replacer = Replacer(r, self.committer.queues)
        self.maintenance = Maintenance(r, self.stats, reap_interval_s, reap_grace_ms, events_retention_s)
        self.errors = EventErrors(r, self.stats)
        self.refusals = Refusals(r, self.name, claim_idle_ms)
        self.tries = Tries(r)
        self.outcomes: dict[bytes, str] | None = None  # set while flush_rounds collects them
        self._flushed = 0.0
        self._refreshed = 0.0
        self._claimed = 0.0
        self.stopping = False
        self.halt = threading.Event()  # set to stop the loop from another thread or a signal handler

    # ------------------------------------------------------------ loop

    def run(self, burst: bool = False) -> None:
        log.info("arbiter %s started", self.name)
        guard = LoopGuard(f"arbiter {self.name}", self.halt, repair=lambda: self.maintenance.repair(self.configs))
        while not self.stopping and not self.halt.is_set():
            try:
                handled = self.step()
                guard.ok()
            except Exception as exc:  # noqa: BLE001 - Redis trouble waited out, anything else said once (guard)
                guard.failed(exc)
                continue
            if burst and handled == 0 and not self._pending_anywhere():
                break
        log.info("arbiter %s stopped: %s", self.name, dict(self.stats))

    def step(self) -> int:
        now = time.monotonic()
        if now - self._refreshed >= self.refresh_s or not self.configs:
            self.refresh()
            self._refreshed = now
        if not self.configs:
            time.sleep(min(self.block_ms / 1000, 0.5))
            return 0
        handled = 0
        if now - self._claimed >= max(self.claim_idle_ms / 3000, 0.2):
            handled += self.reclaim()
            self._claimed = now
        self.maintenance.tick(self.configs, now)
        touched = set()
        for stream, entries in self.read():
            touched.add(experiment_of(stream))
            handled += self.handle_many(experiment_of(stream), entries)
        timer = now - self._flushed >= ROUNDS_S
        self._flushed = now if timer else self._flushed
        for e in [e for e, cfg in self.configs.items() if cfg.exploit.synch and (timer or e in touched)]:
            handled += self.flush_rounds(e)
        return handled

    def read(self) -> list:
        return read_events(self.r, self.name, list(self.configs), self.batch, self.block_ms)

    def flush_rounds(self, exp: str) -> int:
        """exploit.synch: decide the parked members whose round is complete (control.synch)."""
        entries = due(self.r, exp)
        if not entries:
            return 0
        self.outcomes = {}
        try:
            self.handle_many(exp, entries)
        finally:
            outcomes, self.outcomes = self.outcomes, None
        for entry in entries:
            if outcomes.get(entry[0]) == "error":
                self.tries.failed(self.configs[exp], exp, entry, self.errors.last.pop(entry[0], "an error"))
            else:
                self.tries.decided(exp, entry[1][b"member"].decode())
        return len(entries)

    def refresh(self) -> None:
        """Find running experiments (their configs read and rules built once); hand the ended ones to
        maintenance. One whose rules this arbiter cannot build is left to others (control.refusals)."""
        running = running_experiments(self.r)
        configs, deciders = {}, {}
        for e in running:
            try:
                configs[e] = self.configs.get(e) or load_config(self.r, e)
                deciders[e] = self.deciders.get(e) or Decider(configs[e])
            except (RuleError, PluginError) as exc:
                configs.pop(e, None)
                self.refusals.note(e, str(exc))
            except Exception as exc:  # a broken experiment must not stop the others
                configs.pop(e, None)
                log.error("experiment %s: cannot read its config: %s", e, exc)
        ended = {e: cfg for e, cfg in self.configs.items() if e not in configs}
        self.configs, self.deciders = configs, deciders
        self.refusals.keep(set(running) - set(configs))
        self.refusals.check()
        self.maintenance.ended({e: cfg for e, cfg in ended.items() if e not in running}, time.monotonic())

    def reclaim(self) -> int:
        """Take over events another replica read but never acknowledged (it died)."""
        n = 0
        for e in list(self.configs):
            start = "0-0"
            while True:
                resp = self.r.xautoclaim(Keys(e).events, GROUP, self.name, self.claim_idle_ms, start_id=start,
                                         count=self.batch)
                nxt, entries = resp[0], resp[1]  # Redis 7 adds a third item: deleted ids
                for entry_id, fields in entries:
                    if fields is None:
                        continue
                    self.stats["reclaimed"] += 1
                    self.handle(e, entry_id, fields)
                    n += 1
                if nxt in (b"0-0", "0-0") or not entries:
                    break
                start = nxt
        return n

    def _pending_anywhere(self) -> bool:
        for e in self.configs:
            info = self.r.xpending(Keys(e).events, GROUP)
            if info and info.get("pending"):
                return True
        return False

    def _count(self, exp: str, outcome: str, entry_id: bytes) -> None:
        self.stats[outcome] += 1
        if self.outcomes is not None:
            self.outcomes[entry_id] = outcome
        if self.hooks:
            self.hooks.decided(exp, outcome, entry_id)

    # ------------------------------------------------------------ events in rounds

    def handle_many(self, exp: str, entries: list[Entry]) -> int:
        """Decide what one read returned from ``exp``'s stream: rounds of distinct members, each
        in three round trips (``decide_round``); an event a round cannot take goes one by one."""
        cfg = self.configs.get(exp)
        if cfg is None or len(entries) < 2 or is_cluster(self.r):  # a cluster MULTI must stay one member
            for entry_id, fields in entries:
                self.handle(exp, entry_id, fields)
            return len(entries)
        pending: list[tuple[bytes, dict[bytes, bytes], ReadyEvent]] = []
        for entry_id, fields in entries:
            if is_failed(fields):  # a failed segment: one at a time (control.replace)
                self.handle(exp, entry_id, fields)
                continue
            try:
                ev = ReadyEvent.decode(fields.get(b"msg"))
            except ProtocolError:
                self.handle(exp, entry_id, fields)  # dead-letters it, with the reason
                continue
            pending.append((entry_id, fields, ev))
        while pending:
            members: set[str] = set()
            batch, later = [], []
            for item in pending:
                (later if item[2].member in members or item[2].experiment != exp else batch).append(item)
                members.add(item[2].member)
            if not batch:  # only events naming another experiment: handle() dead-letters them
                batch, later = later[:1], later[1:]
            outcomes = self.decide_round(cfg, exp, batch) if len(batch) > 1 else None
            for (entry_id, fields, _), outcome in zip(batch, outcomes or [None] * len(batch), strict=True):
                if outcome is None:
                    self.handle(exp, entry_id, fields)
                else:
                    self._count(exp, outcome, entry_id)
            pending = later
        return len(entries)

    def decide_round(self, cfg: Experiment, exp: str, batch: list[tuple[bytes, dict, ReadyEvent]]) -> list[str] | None:
        """WATCH every member; every decide.lua in one pipelined write; one MULTI of every commit.

        The same decisions as ``decide`` one by one (each member appears once), in three round
        trips instead of three per event. None: something in the round needs the one-by-one
        path (a member moved under the WATCH, a script to load, an event to refuse)."""
        k, decider = Keys(exp), self.deciders[exp]
        try:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.watch(*[k.member(ev.member) for _, _, ev in batch])
                preps = [decider.prepare(ev) for _, _, ev in batch]
                raw = evalsha_many(pipe, "decide", [(p.keys, p.args) for p in preps])
                if raw is None:
                    return None
                replies = [pick_in_python(pipe, decider, p, x) for p, x in zip(preps, raw, strict=True)]
                decided: list[Decided] = [
                    (entry_id, ev, decider.interpret(ev, prep, reply, entry_ms(entry_id), _history(pipe, k)))
                    for (entry_id, _, ev), prep, reply in zip(batch, preps, replies, strict=True)]
                finished = self.committer.commit_all(pipe, cfg, exp, decided)
        except redis.WatchError:
            return None
        except redis.RedisError:
            raise  # the run loop backs off; the events stay pending
        except Exception:  # refused events, plugin errors: one by one, where each is dealt with
            return None
        self.committer.after_all(cfg, decided, finished)
        return [plan.action for _, _, plan in decided]

    # ------------------------------------------------------------ one event

    def handle(self, exp: str, entry_id: bytes, fields: dict[bytes, bytes]) -> str:
        try:
            ev = decode_event(fields)
            if ev.experiment != exp:
                raise ProtocolError(f"experiment: event names {ev.experiment!r} but sits in {exp}'s stream")
            cfg = self.configs.get(exp) or load_config(self.r, exp)
            if isinstance(ev, FailedEvent):
                decider = self.deciders.get(exp) or Decider(cfg)
                outcome = self.replacer.decide(decider, ev, entry_id, lambda pipe: _history(pipe, Keys(exp)))
            else:
                outcome = self.decide(cfg, ev, entry_id)
        except ProtocolError as exc:
            outcome = self.errors.refuse(exp, entry_id, fields, str(exc))
        except redis.RedisError:
            raise  # the run loop backs off; the event stays pending and is retried
        except Exception as exc:  # a bug or a plugin (PB2) failing on this event: keep the fleet alive
            outcome = self.errors.poison(exp, entry_id, fields, exc, lambda: self.configs.get(exp) or load_config(self.r, exp))
        self._count(exp, outcome, entry_id)
        return outcome

    def decide(self, cfg: Experiment, ev: ReadyEvent, entry_id: bytes) -> str:
        """Three round trips: WATCH the member, run decide.lua, then MULTI (commit, enqueue, XACK) EXEC."""
        k = Keys(ev.experiment)
        decider = self.deciders.get(ev.experiment) or Decider(cfg)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.member(ev.member))
                    prep = decider.prepare(ev)
                    reply = pick_in_python(pipe, decider, prep, call_script(pipe, "decide", prep.keys, prep.args))
                    plan = decider.interpret(ev, prep, reply, entry_ms(entry_id), _history(pipe, k))
                    decided: list[Decided] = [(entry_id, ev, plan)]
                    finished = self.committer.commit_all(pipe, cfg, ev.experiment, decided)
                    break
                except redis.WatchError:
                    continue
        self.committer.after_all(cfg, decided, finished)
        return plan.action


def _history(pipe: Any, k: Keys) -> Any:
    """The newest n lineage records, oldest first, read in the WATCH (immediate) phase when asked."""
    def read(n: int) -> list[Lineage]:
        if n <= 0:
            return []
        return readable(k.prefix, [Lineage.from_entry(i, f) for i, f in reversed(pipe.xrevrange(k.lineage, "+", "-",
                                                                                            count=n))])
    return read


def read_events(r: Any, name: str, exps: list[str], batch: int, block_ms: int) -> list:
    """New events from every running experiment's stream: one blocking XREADGROUP, or on a Redis
    Cluster (streams in different slots) one non-blocking read per stream, per node."""
    streams = {Keys(e).events: ">" for e in exps}
    if not is_cluster(r):
        return r.xreadgroup(GROUP, name, streams, count=batch, block=block_ms) or []
    deadline = time.monotonic() + block_ms / 1000
    while True:
        pipe = r.pipeline(transaction=False)
        for stream in streams:
            pipe.xreadgroup(GROUP, name, {stream: ">"}, count=batch)
        resp = [item for reply in pipe.execute() for item in reply or []]
        if resp or time.monotonic() >= deadline:
            return resp
        time.sleep(POLL_S)
