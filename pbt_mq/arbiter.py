"""The stateless arbiter: a consumer in the ``arbiters`` group of every running experiment's events.

For each ``ready`` event: validate it (else dead-letter it); WATCH the member's hash;
``decide.lua`` records the score and picks the donor from the sorted set in O(log n);
then one MULTI/EXEC writes the member, appends the lineage record, queues the member's
next segment and XACKs the event, so a decision and its acknowledgement land together
(three round trips, whatever the population size). The events one read returns are decided
in rounds of distinct members, in those same three round trips per round. The member's
``seq`` is the idempotency key: a redelivered or reclaimed event whose decision is
already committed changes nothing, so no segment is ever queued twice. Every
replica is the same; kill any of them and the others reclaim its pending events.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import RedisClusterException
from rq import Queue

from . import metrics
from .cluster import POLL_S, drain, is_cluster
from .config import Experiment
from .experiment import (
    DONE,
    RUNNING,
    enqueue_segment,
    first_target,
    load_config,
    now_ms,
    queue_for,
)
from .finish import complete_if_all_finished, fail_member
from .gc import collect
from .keys import EXPERIMENTS, GROUP, Keys, private_queue, worker_key
from .protocol import CheckpointRef, ProtocolError, ReadyEvent, SegmentCommand
from .reaper import sweep
from .rules import decision_rng, explore
from .scripts import call as call_script
from .scripts import set_state_if
from .scripts import sha as script_sha
from .store import Store, StoreError, open_store
from .trim import trim_events

log = logging.getLogger("pbt_mq.arbiter")
SNAPSHOT_MAX = 64  # lineage records carry the leaderboard they saw, up to this size
DEAD_RAW_MAX = 64 << 10
MAX_DELIVERIES = 5  # an event failing unexpectedly this many times is dead-lettered


@dataclass
class Plan:
    action: str  # continue | exploit | done | duplicate
    cmd: SegmentCommand | None
    score: float  # leaderboard score (higher is better), NaN if unusable
    ops: list[str] = field(default_factory=list)
    reason: str = ""
    target_reached: bool = False
    snapshot: list[tuple[str, float]] | None = None  # the leaderboard the rules saw (n <= SNAPSHOT_MAX)
    declined_donor: str | None = None
    facts: dict[str, int] | None = None  # n, worse, better, k: enough to check any decision


@dataclass
class Prepared:
    keys: list[str]
    args: list[Any]
    rng: random.Random
    score: float
    reason: str
    target: bool


class Arbiter:
    def __init__(
        self,
        r: redis.Redis,
        name: str | None = None,
        block_ms: int = 1000,
        batch: int = 128,
        claim_idle_ms: int = 30_000,
        refresh_s: float = 1.0,
        reap_interval_s: float = 2.0,
        reap_grace_ms: int = 10_000,
        events_retention_s: float = 3600.0,
    ):
        self.r = r
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms = block_ms
        self.batch = batch
        self.claim_idle_ms = claim_idle_ms
        self.refresh_s = refresh_s
        self.configs: dict[str, Experiment] = {}
        self.stats: Counter[str] = Counter()
        self.reap_interval_s = reap_interval_s
        self.reap_grace_ms = reap_grace_ms
        self._refreshed = 0.0
        self._claimed = 0.0
        self._reaped = 0.0
        self._trimmed = 0.0
        self.events_retention_s = events_retention_s  # < 0: never trim
        self.stores: dict[str, Store] = {}
        self._queues: dict[tuple[str, str], Any] = {}
        self._gc_at: dict[str, float] = {}
        self._ended: dict[str, Experiment] = {}
        self.stopping = False

    # ------------------------------------------------------------ loop

    def run(self, burst: bool = False) -> None:
        log.info("arbiter %s started", self.name)
        backoff = 0.25
        while not self.stopping:
            try:
                handled = self.step()
                backoff = 0.25
            except (redis.RedisError, RedisClusterException) as exc:  # restarting, failing over, out of memory
                log.warning("arbiter %s: Redis unavailable (%s); retrying in %.1f s", self.name, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
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
        if self.reap_interval_s > 0 and now - self._reaped >= self.reap_interval_s:
            self.reap()
            self.collect_garbage(list(self.configs), now)
            self.trim(list(self.configs), now)
            self._reaped = now
        for stream, entries in self.read():
            handled += self.handle_many(self._exp_of(stream), entries)
        return handled

    def queue(self, cfg: Experiment, exp: str, name: str | None = None) -> Any:
        """The RQ queue for ``exp``'s segments (or the one ``name``d), built once: RQ's
        constructor is not free."""
        key = (name or cfg.queue, exp if is_cluster(self.r) else "")
        if key not in self._queues:
            if len(self._queues) > 1024:
                self._queues.clear()
            self._queues[key] = queue_for(self.r, key[0], exp)
        return self._queues[key]

    def read(self) -> list:
        """New events from every running experiment's stream: one blocking XREADGROUP, or on a
        Redis Cluster (streams in different slots) one non-blocking read per stream, per node."""
        streams = {Keys(e).events: ">" for e in self.configs}
        if not is_cluster(self.r):
            return self.r.xreadgroup(GROUP, self.name, streams, count=self.batch, block=self.block_ms) or []
        deadline = time.monotonic() + self.block_ms / 1000
        while True:
            pipe = self.r.pipeline(transaction=False)
            for stream in streams:
                pipe.xreadgroup(GROUP, self.name, {stream: ">"}, count=self.batch)
            resp = [item for reply in pipe.execute() for item in reply or []]
            if resp or time.monotonic() >= deadline:
                return resp
            time.sleep(POLL_S)

    def refresh(self) -> None:
        """Find running experiments; make sure this group exists on their streams."""
        ids = [e.decode() for e in self.r.zrange(EXPERIMENTS, 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for e in ids:
            pipe.hget(Keys(e).meta, "state")
        running = [e for e, s in zip(ids, pipe.execute(), strict=True) if s == RUNNING.encode()]
        configs = {}
        for e in running:
            try:
                configs[e] = self.configs.get(e) or load_config(self.r, e)
            except Exception as exc:  # a broken experiment must not stop the others
                log.error("experiment %s: cannot read its config: %s", e, exc)
        ended = [e for e in self.configs if e not in configs]
        self._ended = {e: self.configs[e] for e in ended}
        self.configs = configs
        if ended:  # a last collection leaves each member's final checkpoint and nothing else
            self.collect_garbage(ended, time.monotonic(), final=True)
            if is_cluster(self.r):  # no worker sweeps an ended experiment's own queue
                for e in ended:
                    try:
                        drain(self.r, self._ended[e].queue, e)
                    except (redis.RedisError, RedisClusterException) as exc:
                        log.warning("%s: could not drain its queue: %s", e, exc)
            for e in ended:
                self.stores.pop(e, None)
                self._gc_at.pop(e, None)

    def reclaim(self) -> int:
        """Take over events another replica read but never acknowledged (it died)."""
        n = 0
        for e in list(self.configs):
            k = Keys(e)
            start = "0-0"
            while True:
                resp = self.r.xautoclaim(
                    k.events, GROUP, self.name, self.claim_idle_ms, start_id=start, count=self.batch
                )
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

    def collect_garbage(self, exps: list[str], now: float, final: bool = False) -> None:
        """Delete checkpoints no one needs, every ``gc.interval_s`` per experiment (and once at its end)."""
        for e in exps:
            cfg = self.configs.get(e) or self._ended.get(e)
            if cfg is None or not cfg.gc.enabled or (not final and now - self._gc_at.get(e, 0.0) < cfg.gc.interval_s):
                continue
            self._gc_at[e] = now
            try:
                store = self._store(e)
                self.stats["gc_deleted"] += collect(self.r, e, cfg, store, min_age_s=0.0 if final else None)
            except (redis.RedisError, StoreError) as exc:
                log.warning("gc: %s: %s", e, exc)

    def _store(self, exp: str) -> Store:
        if exp not in self.stores:
            url = self.r.hget(Keys(exp).meta, "store")
            if not url:
                raise StoreError(f"experiment {exp}: no store URL in its meta hash")
            self.stores[exp] = open_store(url.decode())
        return self.stores[exp]

    def trim(self, exps: list[str], now: float) -> None:
        """Bound every running experiment's events stream, once a minute each (trim.py)."""
        if now - self._trimmed < 60.0 or self.events_retention_s < 0:
            return
        self._trimmed = now
        for e in exps:
            try:
                self.stats["trimmed"] += trim_events(self.r, e, self.events_retention_s, now_ms())
            except redis.RedisError as exc:
                log.warning("trim: %s: %s", e, exc)

    def reap(self) -> None:
        """Requeue the segments of members whose worker died or whose job was lost; end an
        experiment whose members all finished if the decision that should have ended it did not
        (its reply was lost with the connection after EXEC committed)."""
        for e, cfg in list(self.configs.items()):
            try:
                self.stats["requeued"] += sweep(self.r, e, cfg, self.reap_grace_ms)
                complete_if_all_finished(self.r, cfg, e, int(self.r.hget(Keys(e).meta, "finished") or 0))
            except redis.RedisError as exc:
                log.warning("reaper: %s: %s", e, exc)

    def _pending_anywhere(self) -> bool:
        for e in self.configs:
            info = self.r.xpending(Keys(e).events, GROUP)
            if info and info.get("pending"):
                return True
        return False

    @staticmethod
    def _exp_of(stream: bytes | str) -> str:
        s = stream.decode() if isinstance(stream, bytes) else stream
        return s[s.index("{") + 1 : s.rindex("}")]

    # ------------------------------------------------------------ a batch of events

    def handle_many(self, exp: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Decide what one read returned from ``exp``'s stream: rounds of distinct members, each
        in three round trips (``decide_round``); an event a round cannot take goes one by one."""
        cfg = self.configs.get(exp)
        if cfg is None or len(entries) < 2 or is_cluster(self.r):  # a cluster MULTI must stay one member
            for entry_id, fields in entries:
                self.handle(exp, entry_id, fields)
            return len(entries)
        pending: list[tuple[bytes, dict[bytes, bytes], ReadyEvent]] = []
        for entry_id, fields in entries:
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
        k = Keys(exp)
        try:
            with self.r.pipeline(transaction=True) as pipe:
                pipe.watch(*[k.member(ev.member) for _, _, ev in batch])
                preps = [self.prepare(cfg, ev) for _, _, ev in batch]
                replies = _pipelined_scripts(pipe.connection, "decide", preps)
                if replies is None:
                    return None
                decided = [(entry_id, ev, self.interpret(cfg, ev, prep, reply, pipe, _entry_ms(entry_id)))
                           for (entry_id, _, ev), prep, reply in zip(batch, preps, replies, strict=True)]
                finished = self.commit_all(pipe, cfg, exp, decided)
        except redis.WatchError:
            return None
        except redis.RedisError:
            raise  # the run loop backs off; the events stay pending
        except Exception:  # refused events, plugin errors: one by one, where each is dealt with
            return None
        self.after_all(cfg, decided, finished)
        return [plan.action for _, _, plan in decided]

    def commit_all(self, pipe: Any, cfg: Experiment, exp: str, decided: list[tuple[bytes, ReadyEvent, Plan]]) -> list:
        """One MULTI/EXEC of every decision's writes and XACK (``pipe`` is WATCHing its members);
        returns, per decision, the meta's count of finished members after a "done"."""
        k = Keys(exp)
        homes = self.homes(cfg, exp, [(ev, plan) for _, ev, plan in decided])
        pipe.multi()
        ends = []
        for entry_id, ev, plan in decided:
            if plan.action != "duplicate":
                self.commit(pipe, cfg, ev, plan, homes.get(ev.member))
            pipe.xack(k.events, GROUP, entry_id)
            ends.append(len(pipe.command_stack))
        results = pipe.execute()
        return [results[end - 2] if plan.action == "done" else None for end, (_, _, plan) in zip(ends, decided, strict=True)]

    def after_all(self, cfg: Experiment, decided: list[tuple[bytes, ReadyEvent, Plan]], finished: list) -> None:
        for (_, ev, plan), count in zip(decided, finished, strict=True):
            try:  # each on its own: one failing must not skip the others' (all are committed)
                self.after_commit(cfg, ev, plan, count)
            except redis.RedisError as exc:
                log.warning("%s %s: after the decision: %s (the reaper finishes the experiment if needed)",
                            ev.experiment, ev.member, exc)

    def _count(self, exp: str, outcome: str, entry_id: bytes) -> None:
        self.stats[outcome] += 1
        if metrics.ON:
            metrics.decided(exp, outcome, entry_id)

    # ------------------------------------------------------------ one event

    def handle(self, exp: str, entry_id: bytes, fields: dict[bytes, bytes]) -> str:
        k = Keys(exp)
        try:
            ev = ReadyEvent.decode(fields.get(b"msg"))
            if ev.experiment != exp:
                raise ProtocolError(f"experiment: event names {ev.experiment!r} but sits in {exp}'s stream")
            outcome = self.decide(self.configs.get(exp) or load_config(self.r, exp), ev, entry_id)
        except ProtocolError as exc:
            self.dead_letter(k, entry_id, fields, str(exc))
            self.r.xack(k.events, GROUP, entry_id)
            outcome = "dead"
        except redis.RedisError:
            raise  # the run loop backs off; the event stays pending and is retried
        except Exception as exc:  # a bug or a plugin (PB2) failing on this event: keep the fleet alive
            outcome = self.poison(exp, entry_id, fields, exc)
        self._count(exp, outcome, entry_id)
        return outcome

    def poison(self, exp: str, entry_id: bytes, fields: dict[bytes, bytes], exc: Exception) -> str:
        """An event that fails with an unexpected error stays pending and is retried (claimed
        again after ``claim_idle_ms``); after MAX_DELIVERIES it is dead-lettered and its member
        failed with the reason, so the experiment still ends."""
        k = Keys(exp)
        info = self.r.xpending_range(k.events, GROUP, min=entry_id, max=entry_id, count=1)
        n = int(info[0]["times_delivered"]) if info else 1
        if n < MAX_DELIVERIES:
            log.exception("%s: event %s left pending after an unexpected error (delivery %d of %d)",
                          exp, entry_id, n, MAX_DELIVERIES)
            return "error"
        reason = f"deciding it failed {n} times: {type(exc).__name__}: {exc}"
        log.error("%s: event %s: %s; dead-lettered", exp, entry_id, reason)
        self.dead_letter(k, entry_id, fields, reason)
        try:
            ev = ReadyEvent.decode(fields.get(b"msg"))
            cfg = self.configs.get(exp) or load_config(self.r, exp)
            fail_member(self.r, cfg, exp, ev.member, ev.seq, f"its ready event was dead-lettered: {reason}")
        except ProtocolError:
            pass
        self.r.xack(k.events, GROUP, entry_id)
        return "dead"

    def dead_letter(self, k: Keys, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        log.warning("dead-lettering %s %s: %s", k.events, entry_id, reason)
        raw = fields.get(b"msg") or b""
        self.r.xadd(
            k.dead,
            {"reason": reason, "source": k.events, "entry": entry_id, "raw": raw[:DEAD_RAW_MAX]},
            maxlen=10_000,
            approximate=True,
        )

    def decide(self, cfg: Experiment, ev: ReadyEvent, entry_id: bytes) -> str:
        """Three round trips: WATCH the member, run decide.lua, then MULTI (commit, enqueue, XACK) EXEC."""
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(Keys(ev.experiment).member(ev.member))
                    decided = [(entry_id, ev, self.plan(cfg, ev, pipe, _entry_ms(entry_id)))]
                    finished = self.commit_all(pipe, cfg, ev.experiment, decided)
                    break
                except redis.WatchError:
                    continue
        self.after_all(cfg, decided, finished)
        return decided[0][2].action

    def after_commit(self, cfg: Experiment, ev: ReadyEvent, plan: Plan, finished: Any) -> None:
        """What follows a committed decision (``finished``: the meta's count after a "done")."""
        if plan.target_reached:
            set_state_if(self.r, Keys(ev.experiment).meta, RUNNING, DONE, f"{ev.member} reached the target score",
                         now_ms())
        if plan.action == "done":
            complete_if_all_finished(self.r, cfg, ev.experiment, int(finished))
        if plan.action == "exploit":
            log.info("%s %s seq=%d exploit %s: %s", ev.experiment, ev.member, ev.seq, plan.cmd.parent, "; ".join(plan.ops))

    def plan(self, cfg: Experiment, ev: ReadyEvent, pipe: Any, ready_ms: int) -> Plan:
        """Record the score and pick the donor (decide.lua), then mutate; pipe is in immediate mode."""
        prep = self.prepare(cfg, ev)
        reply = call_script(pipe, "decide", prep.keys, prep.args)
        return self.interpret(cfg, ev, prep, reply, pipe, ready_ms)

    def prepare(self, cfg: Experiment, ev: ReadyEvent) -> Prepared:
        """decide.lua's keys and arguments for ``ev``, and what interpreting its reply needs."""
        k = Keys(ev.experiment)
        score = cfg.higher_is_better(ev.score) if math.isfinite(ev.score) else math.nan
        reason, target = self.stop_reason(cfg, ev, RUNNING)
        rng = decision_rng(cfg.seed, ev.member, ev.seq)
        rule = "none" if reason else cfg.exploit.rule
        u = rng.random() if rule != "none" else 0.0  # the draw rules.exploit takes first
        record = json.dumps({"key": ev.checkpoint.key, "sha256": ev.checkpoint.sha256, "size": ev.checkpoint.size,
                             "step": ev.step, "hparams": ev.hparams}, sort_keys=True)
        return Prepared([k.member(ev.member), k.scores, k.ckpts, k.meta], [
            ev.member, ev.seq, repr(score) if math.isfinite(score) else "nan", int(math.isfinite(score)),
            record, rule, cfg.exploit.quantile, repr(u), SNAPSHOT_MAX, cfg.exploit.ties,
        ], rng, score, reason, target)

    def interpret(self, cfg: Experiment, ev: ReadyEvent, prep: Prepared, reply: Any, pipe: Any, ready_ms: int) -> Plan:
        """decide.lua's reply as a plan: done, duplicate, or the next segment (explore runs here)."""
        k = Keys(ev.experiment)
        rng, score, reason, target = prep.rng, prep.score, prep.reason, prep.target
        status = _text(reply[0])
        if status == "dup":
            return Plan("duplicate", None, score)
        if status == "ahead":
            raise ProtocolError(f"seq: event is for seq {ev.seq} but {ev.member} is at seq {_text(reply[1])}")
        meta_state = _text(reply[1])
        if meta_state != RUNNING:
            reason, target = f"experiment {meta_state or 'gone'}", False
        if reason:
            return Plan("done", None, score, reason=reason, target_reached=target)
        facts = dict(zip(("n", "worse", "better", "k"), (int(x) for x in reply[2:6]), strict=True))
        donor, board = _text(reply[6]), reply[9:]
        snapshot = [(_text(m), float(v)) for m, v in zip(board[::2], board[1::2], strict=True)] if board else None
        common = dict(experiment=ev.experiment, member=ev.member, seq=ev.seq + 1, train_s=ev.train_s, ready_ms=ready_ms)
        if donor:
            d = json.loads(reply[8])
            if cfg.stop.steps is None or d["step"] < cfg.stop.steps:
                # ---- PB2 (pbt_mq/pb2.py): model-based explore over one read of the recent lineage ----
                if cfg.explore.rule == "pb2":
                    from .pb2 import explore_pb2, window

                    recent = pipe.xrevrange(k.lineage, "+", "-", count=window(cfg.population))
                    hp, ops = explore_pb2(d["hparams"], cfg, recent, rng, d["step"], ev.member)
                else:
                    hp, ops = explore(d["hparams"], cfg.spaces, cfg.explore, rng)
                # ---- end PB2 ----
                cmd = SegmentCommand(
                    step=d["step"], hparams=hp, why="exploit", start=CheckpointRef(d["key"], d["sha256"], d["size"]),
                    parent=donor, parent_step=d["step"], **common, **first_target(cfg, d["step"]),
                )
                return Plan("exploit", cmd, score, ops=ops, snapshot=snapshot, facts=facts)
        cmd = SegmentCommand(
            step=ev.step, hparams=dict(ev.hparams), why="continue", start=ev.checkpoint,
            **common, **first_target(cfg, ev.step),
        )
        # a donor is declined only when it had already finished: copying it would end this member too
        return Plan("continue", cmd, score, snapshot=snapshot, declined_donor=donor or None, facts=facts)

    @staticmethod
    def stop_reason(cfg: Experiment, ev: ReadyEvent, meta_state: str) -> tuple[str, bool]:
        if meta_state != RUNNING:
            return f"experiment {meta_state or 'gone'}", False
        s = cfg.stop
        if s.score is not None and math.isfinite(ev.score):
            if (ev.score >= s.score) if cfg.mode == "max" else (ev.score <= s.score):
                return f"reached target {cfg.metric} {s.score}", True
        if s.steps is not None and ev.step >= s.steps:
            return f"reached {s.steps} steps", False
        if s.seconds is not None and ev.train_s >= s.seconds:
            return f"trained {s.seconds} s", False
        return "", False

    def homes(self, cfg: Experiment, exp: str, decided: list[tuple[ReadyEvent, Plan]]) -> dict[str, str]:
        """member -> the private queue of the worker that holds it live, for continuing segments,
        when nothing waits in the shared queue (a warm start never jumps a queue of others) and
        that worker is alive on this queue, idle (or still finishing this very segment) and has
        nothing in its own queue; one member per worker. One read, outside the transaction: a
        hint, which the reaper corrects if the worker takes other work meanwhile."""
        cands = [ev for ev, plan in decided if plan.action == "continue" and ev.worker]
        if not cands or is_cluster(self.r):
            return {}
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(self.queue(cfg, exp).key)
        for ev in cands:
            pipe.hmget(worker_key(ev.worker), "queue", "current")
            pipe.llen(Queue.redis_queue_namespace_prefix + private_queue(cfg.queue, ev.worker))
        waiting, *rows = pipe.execute()
        if waiting:
            return {}
        out: dict[str, str] = {}
        taken: set[str] = set()
        for ev, (queue, current), own in zip(cands, rows[::2], rows[1::2], strict=True):
            idle = (current or b"").decode() in ("", f"{exp}/{ev.member}/{ev.seq}")
            if queue == cfg.queue.encode() and idle and not own and ev.worker not in taken:
                out[ev.member] = private_queue(cfg.queue, ev.worker)
                taken.add(ev.worker)
        return out

    def commit(self, pipe: Any, cfg: Experiment, ev: ReadyEvent, plan: Plan, home: str | None = None) -> None:
        k = Keys(ev.experiment)
        cmd = plan.cmd
        member = {
            "state": "queued" if cmd else DONE,
            "score": repr(ev.score),
            "scored_step": ev.step,
            "ckpt_key": ev.checkpoint.key,
            "ckpt_sha256": ev.checkpoint.sha256,
            "ckpt_size": ev.checkpoint.size,
            "ckpt_hparams": json.dumps(ev.hparams, sort_keys=True),
            "train_s": ev.train_s,
            "updated_ms": now_ms(),
            "worker": ev.worker,
        }
        if cmd:
            member.update(
                seq=cmd.seq, step=cmd.step, hparams=json.dumps(cmd.hparams, sort_keys=True), why=cmd.why,
                reaped=0,  # the reaper's give-up count is per segment
            )
            if plan.action == "exploit":
                member.update(parent=cmd.parent, parent_step=cmd.parent_step, last_exploit=f"{cmd.parent}@{ev.step}")
        else:
            member.update(step=ev.step, reason=plan.reason)
        pipe.hset(k.parents, ev.checkpoint.key, ev.start_key or "")
        pipe.xadd(k.lineage, self.lineage_record(ev, plan))
        if cmd:
            enqueue_segment(pipe, self.queue(cfg, cmd.experiment, home), cfg, cmd, member=member)
            pipe.hget(k.meta, "finished")
        else:
            pipe.hset(k.member(ev.member), mapping=member)
            pipe.hincrby(k.meta, "finished", 1)

    @staticmethod
    def lineage_record(ev: ReadyEvent, plan: Plan) -> dict[str, Any]:
        cmd = plan.cmd
        rec: dict[str, Any] = {
            "member": ev.member,
            "seq": ev.seq,
            "start_step": ev.start_step,
            "step": ev.step,
            "score": repr(ev.score),
            "action": plan.action,
            "start_key": ev.start_key or "",
            "ckpt_key": ev.checkpoint.key,
            "hparams": json.dumps(ev.hparams, sort_keys=True),
            "next_hparams": json.dumps(cmd.hparams, sort_keys=True) if cmd else "",
            "parent": (cmd.parent or "") if cmd else "",
            "parent_step": (cmd.parent_step if cmd and cmd.parent_step is not None else ""),
            "next_start_key": cmd.start.key if cmd and cmd.start else "",
            "ops": json.dumps(plan.ops),
            "reason": plan.reason,
            "worker": ev.worker,
        }
        if plan.declined_donor:
            rec["declined_donor"] = plan.declined_donor
        if plan.facts:
            rec.update(plan.facts)
        if plan.snapshot is not None:
            rec["snapshot"] = json.dumps(plan.snapshot)
        return rec


def _text(v: bytes | str | int | None) -> str:
    return v.decode() if isinstance(v, bytes) else "" if v is None else str(v)


def _pipelined_scripts(conn: Any, name: str, preps: list[Prepared]) -> list[Any] | None:
    """EVALSHA of every prepared call in one write on ``conn``; None if any reply is an error
    (a script not loaded yet, a refused argument): the caller goes one by one, which loads it."""
    sha = script_sha(name)
    conn.send_packed_command(conn.pack_commands([("EVALSHA", sha, len(p.keys), *p.keys, *p.args) for p in preps]))
    replies, failed = [], False
    for _ in preps:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError:
            failed = True
            replies.append(None)
    return None if failed else replies


def _entry_ms(entry_id: bytes | str) -> int:
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-", 1)[0])

