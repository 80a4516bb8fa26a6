"""MLflow and W&B for experiments whose file has ``[tracking]``: one sender per experiment, on a worker.

Every worker that publishes a segment of such an experiment offers to send it; one at a time holds
its lease (``pbt:{EXP}:tracking``: holder and lease_ms, renewed at every pass, taken over by
another worker when it lapses) and sends what the experiment's streams hold, from where the
previous sender stopped: every ready event's metrics and hyperparameters at its step, every
exploit and every replacement of the lineage (donor and step; a replacement may start
fresh). So each member has exactly one run per tracker, named
``EXP/MEMBER``, whichever workers trained it; its id is written once (HSETNX) in
``pbt:{EXP}:runs``, so a new sender logs into the same run. No extra process is needed.

It runs on one background thread per worker: a tracker that is down or slow delays only the
sending (a call that fails as "down" is retried with backoff and the cursor waits in Redis while
the streams keep the events), never a segment; an entry a tracker refuses is skipped and counted
(``lost``). The lease is renewed before every chunk (``CHUNK`` entries, fewer once a third of
the lease has gone by), so a sender that lost it (it stalled, another took over) stops within one
chunk. When the experiment has
ended and everything is sent, every run in ``pbt:{EXP}:runs`` is closed (whichever sender opened
it) and ``done_ms`` is set.

The backends come from whoever builds the worker (``pbt-worker`` passes
``integrations.trackers.BACKENDS``: name -> factory): this layer never imports an integration,
and a factory imports its tracker library only when an experiment asks for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import redis

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.failed import is_failed
from pbt_mq.core.hooks import Hook
from pbt_mq.core.ids import entry_ms, now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Meta, TrackingState
from pbt_mq.core.protocol import ProtocolError, ReadyEvent
from pbt_mq.state.experiment import load_config
from pbt_mq.state.finish import last_line

log = logging.getLogger(__name__)
LEASE_MS = 15_000
BATCH = 200  # entries read per stream per pass
CHUNK = 20  # entries sent between two renewals of the lease


class TrackerDown(RuntimeError):
    """A tracker could not be reached: retry later, skip nothing."""


class Tracker(Protocol):
    name: str

    def new_id(self) -> str | None:
        """An id to claim before creating the run (W&B), or None: the server names runs (MLflow)."""
        ...

    def open(self, member: str, run_id: str | None) -> str:
        """The member's run (created when ``run_id`` is None); its id."""
        ...

    def log(self, run_id: str, step: int, metrics: dict[str, float], hparams: dict[str, Any], when_ms: int) -> None:
        """A segment's metrics and hyperparameters at its step; ``when_ms``: when it was published."""
        ...

    def exploit(self, run_id: str, rec: Lineage) -> None:
        """The member copied ``rec.parent`` at ``rec.parent_step`` (its step: ``rec.step``)."""
        ...

    def replaced(self, run_id: str, rec: Lineage) -> None:
        """The member's segment from ``rec.step`` failed for good (``rec.reason``: the error) and it
        restarted from ``rec.parent`` at ``rec.parent_step``, or fresh from the prior (no parent)."""
        ...

    def delete(self, run_id: str) -> None: ...

    def close(self, run_id: str, finished: bool) -> None: ...


def donor_number(rec: Lineage) -> int | None:
    """The donor's number (m003 -> 3), a metric trackers can plot; None: no donor (a fresh restart)."""
    digits = "".join(c for c in rec.parent if c.isdigit())
    return int(digits) if digits else None


def source(rec: Lineage) -> str:
    """Where the member's weights came from, short: DONOR@STEP, or "fresh" (a replacement from the prior)."""
    return f"{rec.parent}@{rec.parent_step}" if rec.parent else "fresh"


def in_words(rec: Lineage) -> str:
    """An exploit or a replacement, said in one line (a tracker's tag or note)."""
    if rec.action is Action.REPLACED:
        start = f"restarted from {rec.parent} at step {rec.parent_step}" if rec.parent else "restarted fresh"
        said = [f"its segment from step {rec.step} failed ({last_line(rec.reason)})", start]
    else:
        said = [f"at step {rec.step} copied {rec.parent} at step {rec.parent_step}"]
    return "; ".join(said + list(rec.ops or []))


def objectives(cfg: Experiment) -> tuple[str, str]:
    """The experiment's metrics and their modes, comma-separated (several: multi-objective)."""
    return ",".join(cfg.metrics) or cfg.metric, ",".join(cfg.modes) or cfg.mode


# ``[tracking] NAME = TARGET`` -> factory(TARGET, cfg, experiment); ImportError: its library is missing.
TrackerFactory = Callable[[str, Experiment, str], Tracker]


def load_trackers(cfg: Experiment, experiment: str,
                  backends: Mapping[str, TrackerFactory]) -> tuple[list[Tracker], list[str]]:
    """The experiment's trackers, and what kept any from starting (each left out, training goes on)."""
    out, problems = [], []
    for name, target in (("mlflow", cfg.tracking.mlflow), ("wandb", cfg.tracking.wandb)):
        if not target:
            continue
        factory = backends.get(name)
        if factory is None:
            problems.append(f"{name}: this worker was started without a {name} backend; run pbt-worker")
            continue
        try:
            out.append(factory(target, cfg, experiment))
        except ImportError as exc:
            problems.append(f"{name}: {exc}; install it on the workers: pip install 'pbt-mq[{name}]'")
        except Exception as exc:  # a bad URI, a library that refuses: said once, training goes on untracked
            problems.append(f"{name} = {target!r}: {type(exc).__name__}: {exc}")
    for problem in problems:
        log.error("%s: [tracking] %s", experiment, problem)
    return out, problems


def say_problem(r: Any, experiment: str, problem: str) -> None:
    """Where users look (``pbt status``, ``pbt local``'s summary): the tracking hash's ``problem`` field."""
    r.hset(Keys(experiment).tracking, mapping=TrackingState.fields(problem=problem[:2000], problem_ms=now_ms()))


class Sender:
    """Sends one experiment while this worker holds its lease."""

    def __init__(self, r: Any, worker_id: str, experiment: str, trackers: list[Tracker]) -> None:
        self.r, self.me, self.exp, self.k = r, worker_id, experiment, Keys(experiment)
        self.trackers = trackers
        self.runs: dict[tuple[str, str], str] = {}
        self.held = False
        self.finished = False
        self.backoff_until = 0.0
        self.failures = 0

    def lease(self) -> bool:
        """Take or renew the lease; False (and ``held`` False) when another worker holds it."""
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.k.tracking)
                t = TrackingState.read(pipe, self.k.tracking, "holder", "lease_ms", "done_ms")
                if t.done_ms:
                    self.finished = True
                if t.done_ms or (t.holder and t.holder != self.me and (t.lease_ms or 0) > now_ms()):
                    pipe.unwatch()
                    self.held = False
                    return False
                pipe.multi()
                pipe.hset(self.k.tracking, mapping=TrackingState.fields(holder=self.me, lease_ms=now_ms() + LEASE_MS))
                pipe.execute()
                self.held = True
                return True
            except redis.WatchError:  # someone wrote the hash meanwhile: not ours this time
                self.held = False
                return False

    def release(self) -> None:
        if self.held:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.k.tracking)
                    if TrackingState.read(pipe, self.k.tracking, "holder").holder == self.me:
                        pipe.multi()
                        pipe.hset(self.k.tracking, mapping=TrackingState.fields(lease_ms=0))
                        pipe.execute()
                except redis.WatchError:
                    pass
        self.held = False

    def pump(self) -> bool:
        """One pass: send a batch of each stream. True when there may be more to send."""
        if time.monotonic() < self.backoff_until or not self.lease():
            return False
        ended = Meta.read(self.r, self.k.meta, "state").state is not ExperimentState.RUNNING  # before the reads
        try:
            more = self._stream("events")
            more = self.held and (self._stream("lineage") or more)
            if self.held and not more and ended and self.lease():  # everything written before the end was read
                self._finish()
        except TrackerDown as exc:
            self.failures += 1
            wait = min(60.0, 2.0 ** self.failures)
            log.warning("%s: tracker unreachable (%s); retrying in %.0f s (training goes on)", self.exp, exc, wait)
            self.backoff_until = time.monotonic() + wait
            if self.failures >= 3:  # not a blip: say it where users look
                say_problem(self.r, self.exp, f"tracker unreachable {self.failures} times in a row: {exc}")
            return False
        if self.failures >= 3:
            say_problem(self.r, self.exp, "")  # it recovered
        self.failures = 0
        return more

    def _stream(self, which: str) -> bool:
        """Send a batch of one stream, a chunk at a time, each under a renewed lease; True when
        the batch was full (there may be more)."""
        cursor: str = getattr(TrackingState.read(self.r, self.k.tracking, which), which) or "0-0"
        key = self.k.events if which == "events" else self.k.lineage
        entries = self.r.xrange(key, f"({cursor}", "+", count=BATCH)
        i = 0
        while i < len(entries):
            if not self.lease():  # lost it: the new holder goes on from the cursor
                return False
            n, moved = self._chunk(which, cursor, entries[i:i + CHUNK])
            if moved is None:
                self.held = False
                return False
            i, cursor = i + n, moved
        return len(entries) == BATCH

    def _chunk(self, which: str, cursor: str, entries: list[tuple[Any, Any]]) -> tuple[int, str | None]:
        """Send ``entries`` (fewer if a third of the lease has gone by: a slow tracker makes short
        chunks) and move the cursor past them: how many, and the new cursor, or None if this worker
        no longer holds the lease or someone else moved the cursor."""
        sent = lost = 0
        prev: Any = cursor
        until = time.monotonic() + LEASE_MS / 3000
        for entry_id, fields in entries:
            if sent + lost and time.monotonic() >= until:
                break
            try:
                if which == "events" and is_failed(fields):
                    pass  # a failed segment (worker.on_failure = replace): no metrics to send
                elif which == "events":
                    ev = ReadyEvent.decode(fields[b"msg"])
                    for t in self.trackers:
                        t.log(self._run(t, ev.member), ev.step, ev.metrics, ev.hparams, entry_ms(entry_id))
                else:
                    rec = Lineage.from_entry(entry_id, fields)
                    if rec.action is Action.EXPLOIT:
                        for t in self.trackers:
                            t.exploit(self._run(t, rec.member), rec)
                    elif rec.action is Action.REPLACED:
                        for t in self.trackers:
                            t.replaced(self._run(t, rec.member), rec)
                sent += 1
            except TrackerDown:
                if sent or lost:
                    self._advance(which, cursor, prev, sent, lost)
                raise
            except (ProtocolError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                log.warning("%s: %s entry %s not sent: %s", self.exp, which, entry_id, exc)
                lost += 1
            prev = entry_id
        return sent + lost, self._advance(which, cursor, prev, sent, lost)

    def _advance(self, which: str, cursor: str, last: Any, sent: int, lost: int) -> str | None:
        """Move the cursor, only while this worker still holds the lease and no one moved it."""
        last = last.decode() if isinstance(last, bytes) else last
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.k.tracking)
                t = TrackingState.read(pipe, self.k.tracking, "holder", which)
                if t.holder != self.me or (getattr(t, which) or "0-0") != cursor:
                    pipe.unwatch()
                    return None
                pipe.multi()
                pipe.hset(self.k.tracking, mapping=TrackingState.fields(**{which: last}))
                pipe.hincrby(self.k.tracking, "sent", sent)
                pipe.hincrby(self.k.tracking, "lost", lost)
                pipe.execute()
                return str(last)
            except redis.WatchError:
                return None

    def _run(self, t: Tracker, member: str) -> str:
        """The member's one run in ``t``: from pbt:{EXP}:runs, or created now and written once."""
        slot = (t.name, member)
        if slot in self.runs:
            return self.runs[slot]
        field = f"{t.name}/{member}"
        raw = self.r.hget(self.k.runs, field)
        if raw is None:
            proposed = t.new_id()
            made = t.open(member, None) if proposed is None else proposed
            if not self.r.hsetnx(self.k.runs, field, made) and proposed is None:
                t.delete(made)  # another sender was first: its run is the member's
            raw = self.r.hget(self.k.runs, field)
        rid = raw.decode() if isinstance(raw, bytes) else str(raw)
        self.runs[slot] = t.open(member, rid)
        return self.runs[slot]

    def _finish(self) -> None:
        """Everything of the ended experiment is sent: close every run it has (``pbt:{EXP}:runs``,
        also those a sender that died opened), record it, give the lease back."""
        for field in sorted(self.r.hgetall(self.k.runs)):
            name, _, member = (field.decode() if isinstance(field, bytes) else str(field)).partition("/")
            for t in self.trackers:
                if t.name == name and member:
                    if not self.lease():  # closing is slow (W&B resumes a run to end it): another took over
                        return
                    t.close(self._run(t, member), finished=True)
        self.runs.clear()
        self.r.hset(self.k.tracking, mapping=TrackingState.fields(done_ms=now_ms(), lease_ms=0))
        self.finished = True
        log.info("%s: sent to its trackers in full", self.exp)

    def leave(self) -> None:
        """This worker stops: flush what the trackers buffer, and let another worker take over."""
        for (name, _), rid in self.runs.items():
            for t in self.trackers:
                if t.name == name:
                    t.close(rid, finished=False)
        self.runs.clear()
        self.release()


class TrackingHook(Hook):
    """Installed by every pbt-worker: sends the experiments it trains that ask for tracking, with
    ``backends`` (``[tracking]`` name -> factory; ``pbt-worker`` passes ``integrations.trackers``'s)."""

    def __init__(self, r: Any, worker_id: str, backends: Mapping[str, TrackerFactory], interval_s: float = 1.0) -> None:
        self.r, self.worker_id, self.interval_s = r, worker_id, interval_s
        self.backends = dict(backends)
        self.asks: dict[str, bool] = {}
        self.senders: dict[str, Sender] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="pbt-tracking", daemon=True)

    def segment_done(self, cmd: Any, event: Any) -> None:
        exp = cmd.experiment
        if exp not in self.asks:
            cfg = load_config(self.r, exp)
            self.asks[exp] = bool(cfg.tracking)
            if cfg.tracking:
                trackers, problems = load_trackers(cfg, exp, self.backends)
                for problem in problems:
                    say_problem(self.r, exp, f"not tracked: {problem}")
                with self.lock:
                    if trackers:
                        self.senders[exp] = Sender(self.r, self.worker_id, exp, trackers)
                if not self.thread.is_alive():
                    self.thread.start()

    def _loop(self) -> None:
        while not self.halt.is_set():
            busy = self._pass()
            self.halt.wait(0.0 if busy else self.interval_s)

    def _pass(self) -> bool:
        busy = False
        with self.lock:
            senders = list(self.senders.items())
        for exp, s in senders:
            try:
                busy |= s.pump()
            except redis.RedisError as exc:
                log.warning("%s: tracking: redis: %s", exp, exc)
            except Exception as exc:  # a tracker library's surprise: never the worker's problem
                s.failures += 1
                s.backoff_until = time.monotonic() + min(60.0, 2.0 ** s.failures)
                log.warning("%s: tracking: %s: %s", exp, type(exc).__name__, exc)
            if s.finished:
                with self.lock:
                    self.senders.pop(exp, None)
        return busy

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is left (at most ``timeout_s``), then leave: another worker goes on from there."""
        self.halt.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.senders and time.monotonic() < deadline and self._pass():
            pass
        for s in list(self.senders.values()):
            try:
                s.leave()
            except Exception as exc:
                log.warning("%s: tracking: could not leave cleanly: %s", s.exp, exc)
