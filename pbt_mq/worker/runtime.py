"""The segment runner: the one function RQ jobs may call, and the worker state it keeps.

A worker process keeps the last model it trained *live*: when the next segment continues
that member from the checkpoint this worker just wrote, nothing is downloaded or rebuilt.
Otherwise the live object is reused and only its state is loaded (``worker.loading``): from the
checkpoints this worker wrote, kept in host memory (``worker.cache``), or with one
verified download; never a re-import or re-init.

A segment: claim it (claim_segment.lua: only the member's current job runs), obtain the
trainable, ``apply`` the hyperparameters, ``train`` to the target, ``evaluate``, save the
checkpoint, then publish the ready event and mark the member ready in one transaction, only if
this job still owns the member and the experiment still runs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
import traceback
from collections import Counter
from typing import Any

import redis

from pbt_mq.broker.jobs import current_job_id, queue_for
from pbt_mq.broker.scripts import call as call_script
from pbt_mq.broker.scripts import call_many, text
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.hooks import Hooks
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys, worker_key
from pbt_mq.core.model import Member, Meta
from pbt_mq.core.protocol import PHASES, CheckpointRef, ReadyEvent, SegmentCommand, checkpoint_key
from pbt_mq.state.experiment import load_config
from pbt_mq.state.failure import give_up
from pbt_mq.state.segments import enqueue_segment
from pbt_mq.store import checkpoint
from pbt_mq.store.base import Store
from pbt_mq.store.open import open_store
from pbt_mq.worker.cache import CheckpointCache
from pbt_mq.worker.loading import Live, Loader
from pbt_mq.worker.loop import FunctionTrainable, user_frame
from pbt_mq.worker.uploads import Uploads

log = logging.getLogger(__name__)


class Runtime:
    """Per-process worker state; set once by ``pbt-worker`` before it takes jobs."""

    def __init__(self, r: Any, worker_id: str, device: str = "cpu", live_models: int = 1, hooks: Hooks | None = None,
                 cache_bytes: int = 0):
        self.r = r
        self.worker_id = worker_id
        self.device = device
        self.live_models = live_models  # 0: never keep a model live (every segment downloads)
        self.live: dict[str, Live] = {}  # experiment -> last trained model
        self.stores: dict[str, Store] = {}
        self.configs: dict[str, Experiment] = {}
        self.store_urls: dict[str, str] = {}
        self.schemas: dict[str, int] = {}  # experiment -> its meta schema: the checkpoint format it uses
        self.stats: Counter[str] = Counter()
        self.current: str = ""
        self.in_flight: str = ""  # the job being run, from its claim to its publish ("" between jobs)
        self.last_phases_s = 0.0  # load + train + eval + save of the last segment
        self.overhead_s = 0.0  # pbt-mq's time per published segment besides those, summed (worker.jobloop)
        self.hooks = hooks or Hooks()
        self.cache = CheckpointCache(cache_bytes)  # 0: off
        self.loader = Loader(r, device, self.hooks, self.cache)
        self.uploads = Uploads(r, self.hooks)
        self.pending: tuple | None = None  # an overlapped upload waiting for its event to go out
        self.keep: tuple | None = None  # the new checkpoint to cache once its event is out

    def store(self, url: str) -> Store:
        if url not in self.stores:
            self.stores[url] = open_store(url)
        return self.stores[url]

    def config(self, exp: str) -> Experiment:
        """An experiment's config never changes after launch: read it from Redis once."""
        if exp not in self.configs:
            self.configs[exp] = load_config(self.r, exp)
        return self.configs[exp]

    def store_url(self, exp: str) -> str:
        if exp not in self.store_urls:
            meta = Meta.read(self.r, Keys(exp).meta, "store", "schema")
            if not meta.store:
                raise RuntimeError(f"experiment {exp}: no store URL in its meta hash")
            self.store_urls[exp], self.schemas[exp] = meta.store, meta.schema
        return self.store_urls[exp]

    # ------------------------------------------------------------ one segment

    def run(self, cmd: SegmentCommand, job_id: str, after: list[tuple] = ()) -> dict[str, Any]:
        """Run one segment; ``after``: raw Redis commands to send with the last write of a published
        segment (the job loop's EXPIRE of the job hash), in the same round trip."""
        self.in_flight = f"{cmd.experiment}/{cmd.member}/{cmd.seq} (job {job_id})"
        try:
            return self._run(cmd, job_id, list(after))
        finally:
            self.in_flight = ""

    def _run(self, cmd: SegmentCommand, job_id: str, after: list[tuple]) -> dict[str, Any]:
        k = Keys(cmd.experiment)
        cfg = self.config(cmd.experiment)
        started_ms = now_ms()
        current = f"{cmd.experiment}/{cmd.member}/{cmd.seq}"
        # Claim it and say so at once (warm routing reads it) in one round trip; a refused claim
        # takes the word back (rare: a stale copy of a requeued segment).
        claim, _ = call_many(self.r, [("claim_segment", [k.member(cmd.member), k.meta],
                                       [job_id, self.worker_id, started_ms]),
                                      ("set_current", [worker_key(self.worker_id)], [current])])
        claim = text(claim)
        if claim != "ok":
            self._announce("")
            log.info("skip %s %s seq=%d: %s", cmd.experiment, cmd.member, cmd.seq, claim)
            self.stats["skipped"] += 1
            return {"skipped": claim}
        self.current = current
        self.pending = self.keep = None
        try:
            event = self._train(cfg, cmd)
        except Exception as exc:
            self.live.pop(cmd.experiment, None)  # state may be half-loaded: never reuse it
            self._failed(cfg, cmd, job_id, exc)
            raise
        finally:
            self.current = ""
        self.last_phases_s = sum(event.timings_s.get(p, 0.0) for p in PHASES)
        if cmd.ready_ms:
            event.timings_s["wait"] = max(0.0, (started_ms - cmd.ready_ms) / 1000)
        pending, self.pending = self.pending, None
        outcome = self._publish(k, cmd, job_id, event, pending is None, after)
        if outcome != "published":
            log.warning("%s %s seq=%d: %s; result dropped", cmd.experiment, cmd.member, cmd.seq,
                        "a requeued copy owns the member now" if outcome == "superseded" else "the experiment ended")
            self.keep = None
            self._drop(k, event.checkpoint.key, uploaded=pending is None)
            self.stats[outcome] += 1
            return {"skipped": outcome}
        if pending is not None:
            self.uploads.start(*pending)
        if self.keep is not None:
            self._keep(*self.keep)
            self.keep = None
        self.stats["segments"] += 1
        if self.hooks:
            self.hooks.segment_done(cmd, event)
        log.info("%s %s seq=%d steps %d-%d %s=%.6g (%s, train %.2fs)", cmd.experiment, cmd.member, cmd.seq,
                 cmd.step, event.step, cfg.metric, event.score, cmd.why, event.timings_s["train"])
        return {"step": event.step, "score": event.score, "checkpoint": event.checkpoint.key}

    def _train(self, cfg: Experiment, cmd: SegmentCommand) -> ReadyEvent:
        t0 = time.perf_counter()
        store = self.store(self.store_url(cmd.experiment))  # cached: one lookup per experiment
        legacy = self.schemas[cmd.experiment] < checkpoint.FORMAT_SCHEMA  # launched by an earlier release
        trainable, how, start = self.loader.obtain(cfg, cmd, store, self.live.get(cmd.experiment), legacy)
        trainable.apply(dict(cmd.hparams))
        t1 = time.perf_counter()
        step = self._advance(trainable, cmd, start.step)
        t2 = time.perf_counter()
        load, train, after = t1 - t0, t2 - t1, 0.0
        if isinstance(trainable, FunctionTrainable):  # its setup and evaluation ran in the call too: not training
            train, after = min(trainable.train_s, train), trainable.after_s
            load += max(0.0, t2 - t1 - train - after)
        metrics = trainable.evaluate()
        missing = [m for m in cfg.metrics or (cfg.metric,) if m not in metrics]
        if missing:
            raise KeyError(f"evaluate() returned {sorted(metrics)}, but the experiment's metric {missing[0]!r} is not there")
        clean = {str(a): _to_float(b) for a, b in metrics.items()}
        t3 = time.perf_counter()
        key = checkpoint_key(cmd.experiment, cmd.member, cmd.seq, step, secrets.token_hex(4),
                             checkpoint.extension(self.schemas[cmd.experiment]))
        state = {"state": trainable.state_dict(), "step": step, "hparams": dict(cmd.hparams), "member": cmd.member}
        self.r.zadd(Keys(cmd.experiment).uploading, {key: now_ms()})  # before the upload: GC sees every object
        cached = self.cache.limit_bytes and not checkpoint.is_legacy(key)
        if cfg.worker.overlap_upload or cached:  # a copy: kept, and uploaded later or now
            data, sha256, size = checkpoint.serialize(state, key)
            ref = CheckpointRef(key, sha256, size)
            if cached:  # kept once published: a failed or dropped segment's checkpoint is never named
                self.keep = (cmd, start.key, key, data, sha256)
            if cfg.worker.overlap_upload:  # uploaded by run() once the event is out (uploads.py)
                self.pending = (store, cmd.experiment, key, data, sha256, time.perf_counter() - t3)
            else:
                checkpoint.upload(store, key, data, sha256)
                if self.hooks:
                    self.hooks.checkpoint_saved(cmd.experiment, ref.size, time.perf_counter() - t3)
        else:
            ref = checkpoint.save(store, key, state)
            if self.hooks:
                self.hooks.checkpoint_saved(cmd.experiment, ref.size, time.perf_counter() - t3)
        t4 = time.perf_counter()
        if self.live_models:
            self.live[cmd.experiment] = Live(cmd.member, ref.key, trainable)
        self.stats[how] += 1
        event = ReadyEvent(
            experiment=cmd.experiment, member=cmd.member, seq=cmd.seq, step=step, score=clean[cfg.metric],
            checkpoint=ref, hparams=dict(cmd.hparams), metrics=clean, worker=self.worker_id,
            timings_s={"build": self.loader.build_s, "load": max(0.0, load - self.loader.build_s), "train": train,
                       "eval": t3 - t2 + after, "save": t4 - t3, how: 1.0},
            train_s=cmd.train_s + train, start_step=start.step, start_key=start.key,
        )
        ReadyEvent.decode(event.encode())  # an event the arbiter would reject fails here, as a segment failure
        return event

    def _keep(self, cmd: SegmentCommand, start_key: str | None, key: str, data: Any, sha256: str) -> None:
        """Cache the member's new checkpoint, and make the one it started from the first to go: only an
        exploit copying this member before its new score was decided still needs it. So a worker cycling
        through more members than its cache holds evicts stale checkpoints, not the next member's."""
        if start_key and start_key.startswith(f"{cmd.experiment}/{cmd.member}/"):
            self.cache.demote(start_key)
        self.cache.put(key, data, sha256)

    @staticmethod
    def _advance(trainable: Any, cmd: SegmentCommand, start: int) -> int:
        """Train the segment's length from ``start`` (the command's step unless recovered)."""
        if isinstance(trainable, FunctionTrainable):  # the loop API: the function trains to its report()
            return trainable.segment(cmd, start)
        if cmd.until_step is not None:
            trainable.train(cmd.until_step - cmd.step)
            return start + cmd.until_step - cmd.step
        step, deadline = start, time.perf_counter() + float(cmd.seconds or 0)
        while True:
            trainable.train(1)
            step += 1
            if time.perf_counter() >= deadline:
                return step

    def _announce(self, current: str) -> None:
        """Say what this worker runs at once, not at the next heartbeat (warm routing reads it)."""
        try:
            call_script(self.r, "set_current", [worker_key(self.worker_id)], [current])
        except redis.RedisError as exc:
            log.debug("could not announce %r: %s", current, exc)

    def _drop(self, k: Keys, key: str, uploaded: bool) -> None:
        """Delete a checkpoint no event will ever name (the garbage collector never sees it)."""
        try:
            if uploaded:
                self.store(self.store_url(k.experiment)).delete(key)
            self.r.zrem(k.uploading, key)
        except Exception as exc:  # the store or Redis is down: gc's abandoned-upload rule takes it later
            log.warning("%s: could not delete dropped checkpoint %s: %s", k.experiment, key, exc)

    def _publish(self, k: Keys, cmd: SegmentCommand, job_id: str, event: ReadyEvent, stored: bool = True,
                 after: list[tuple] = ()) -> str:
        """Publish the event and mark the member "ready", only if this job still owns the member
        and the experiment still runs: "published", "superseded" or "ended".

        From then on the consumer group owns the member's progress (the reaper leaves it
        alone however long the arbiters take). A worker whose segment was requeued meanwhile
        (it lost its heartbeat but lived) must not overwrite the newer copy's state; a segment
        that ends after its experiment did has no one to decide it.

        One round trip: publish.lua, then this worker says it is idle (the arbiter may send the
        member's next segment here), then ``after`` (the job loop's EXPIRE of the job hash).
        """
        replies = call_many(self.r, [
            ("publish", [k.member(cmd.member), k.meta, k.events, k.uploading, k.stored],
             [job_id, self.worker_id, cmd.member, cmd.seq, event.step, repr(event.score), event.encode(),
              event.checkpoint.key, "1" if stored else "0", now_ms()]),
            ("set_current", [worker_key(self.worker_id)], [""]),
        ], after)
        return text(replies[0])

    def _failed(self, cfg: Experiment, cmd: SegmentCommand, job_id: str, exc: BaseException) -> None:
        """Retry the segment, or fail the member, but only if this job is still the member's current one."""
        tb = traceback.format_exc(limit=30)[-4000:]
        mkey = Keys(cmd.experiment).member(cmd.member)
        log.error("segment %s %s seq=%d failed (attempt %d): %s: %s%s (traceback: pbt status %s %s)", cmd.experiment,
                  cmd.member, cmd.seq, cmd.attempt, type(exc).__name__, exc, user_frame(exc), cmd.experiment, cmd.member)
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(mkey)
                if Member.read(pipe, mkey, "job").job != job_id:
                    pipe.unwatch()
                    return  # a requeued copy owns the member now
                if cmd.attempt >= cfg.worker.max_retries:
                    pipe.unwatch()
                    give_up(self.r, cfg, cmd, job_id, tb, self.worker_id)  # failed, or replaced (on_failure)
                    return
                retry = dataclasses.replace(cmd, attempt=cmd.attempt + 1)
                pipe.multi()
                pipe.hset(mkey, mapping=Member.fields(error=tb, attempt=retry.attempt))
                enqueue_segment(pipe, queue_for(self.r, cfg.queue, retry.experiment), cfg, retry,
                                suffix=f"_a{retry.attempt}")
                pipe.execute()
            except redis.WatchError:
                log.warning("%s %s: member changed while recording the failure; leaving it", cmd.experiment, cmd.member)


def _to_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def runner(rt: Runtime) -> Any:
    """The function segment jobs call in this process (``broker.jobs.SegmentJob.install_runner``)."""

    def run_segment(payload: bytes) -> dict[str, Any]:
        return rt.run(SegmentCommand.decode(payload), current_job_id())

    return run_segment
