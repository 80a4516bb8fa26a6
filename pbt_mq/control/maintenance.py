"""The arbiter's housekeeping, on timers: the reaper (no member is ever stuck), checkpoint garbage
collection, trimming the events streams and archiving the lineage beyond its Redis window; plus,
for an experiment that ended, a last collection, an empty events stream and a last archive.

Every replica runs it; running it twice at once is harmless (each piece is idempotent).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from pbt_mq.broker.cluster import REDIS_ERRORS, is_cluster
from pbt_mq.broker.jobs import drain
from pbt_mq.config.experiment import Experiment
from pbt_mq.control.gc import collect
from pbt_mq.control.guard import misplaced_key
from pbt_mq.control.quarantine import repair
from pbt_mq.control.reaper import sweep
from pbt_mq.control.trim import drop_rounds, empty_events, tracking_floor, trim_boards, trim_events
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Meta
from pbt_mq.state.archive import archive
from pbt_mq.state.finish import complete_if_all_finished
from pbt_mq.store.base import Store, StoreError
from pbt_mq.store.open import open_store

log = logging.getLogger(__name__)
TRIM_INTERVAL_S = 2.0  # decided events leave Redis within seconds
ARCHIVE_INTERVAL_S = 5.0


class Maintenance:
    def __init__(self, r: Any, stats: Counter[str], reap_interval_s: float = 2.0, reap_grace_ms: int = 10_000,
                 events_retention_s: float = 5.0) -> None:
        self.r = r
        self.stats = stats
        self.reap_interval_s = reap_interval_s  # 0: no reaper, no GC, no trimming
        self.reap_grace_ms = reap_grace_ms
        self.events_retention_s = events_retention_s  # < 0: never trim
        self.stores: dict[str, Store] = {}
        self._reaped = 0.0
        self._trimmed = 0.0
        self._archived = 0.0
        self._gc_at: dict[str, float] = {}
        self._reported: set[tuple[str, ...]] = set()
        self.configs: dict[str, Experiment] = {}  # the running ones, as of the last tick

    def tick(self, configs: dict[str, Experiment], now: float) -> None:
        """Run what is due (``now``: time.monotonic())."""
        self.configs = configs
        if self.reap_interval_s <= 0 or now - self._reaped < self.reap_interval_s:
            return
        self._reaped = now
        self.reap(configs)
        self.collect_garbage(configs, now)
        self.trim_boards(configs)
        if self.events_retention_s >= 0 and now - self._trimmed >= TRIM_INTERVAL_S:
            self._trimmed = now
            self.trim(configs)
        if now - self._archived >= ARCHIVE_INTERVAL_S:
            self._archived = now
            self.archive(configs)

    def reap(self, configs: dict[str, Experiment]) -> None:
        """Requeue the segments of members whose worker died or whose job was lost; end an
        experiment whose members all finished if the decision that should have ended it did not
        (its reply was lost with the connection after EXEC committed)."""
        for e, cfg in list(configs.items()):
            with self.isolated("reaper", e):
                self.stats["requeued"] += sweep(self.r, e, cfg, self.reap_grace_ms)
                complete_if_all_finished(self.r, cfg, e, Meta.read(self.r, Keys(e).meta, "finished").finished)

    def repair(self, configs: dict[str, Experiment]) -> int:
        """After WRONGTYPE or NOGROUP: move every running experiment's misplaced keys aside (control.quarantine).
        How many keys it moved or groups it made again (0: nothing here to repair)."""
        fixed = 0
        for e, cfg in list(configs.items()):
            with self.isolated("repair", e):
                fixed += repair(self.r, e, cfg)
        return fixed

    def collect_garbage(self, configs: dict[str, Experiment], now: float, final: bool = False) -> None:
        """Delete checkpoints no one needs, every ``gc.interval_s`` per experiment (and once at its end)."""
        for e, cfg in configs.items():
            if not cfg.gc.enabled or (not final and now - self._gc_at.get(e, 0.0) < cfg.gc.interval_s):
                continue
            self._gc_at[e] = now
            with self.isolated("gc", e):
                self.stats["gc_deleted"] += collect(self.r, e, cfg, self.store(e), min_age_s=0.0 if final else None)

    def trim_boards(self, configs: dict[str, Experiment], everything: bool = False) -> None:
        """Boards (exploit.compare = "step") every live member has passed. Once it ended (``everything``):
        all of them and the round state, where members stood (``reached``, kept by synchronous rounds on
        any board too; a resumed run rebuilds it, ``state.experiment.unpause``)."""
        for e, cfg in configs.items():
            with self.isolated("trim boards", e):
                if everything and (cfg.exploit.compare == "step" or cfg.exploit.synch):
                    self.stats["boards_trimmed"] += drop_rounds(self.r, e)
                elif cfg.exploit.compare == "step":
                    self.stats["boards_trimmed"] += trim_boards(self.r, e)

    def trim(self, configs: dict[str, Experiment]) -> None:
        """Bound every running experiment's events stream (trim.py)."""
        for e, cfg in configs.items():
            with self.isolated("trim", e):
                self.stats["trimmed"] += trim_events(self.r, e, self.events_retention_s, now_ms(), bool(cfg.tracking))

    def archive(self, configs: dict[str, Experiment]) -> None:
        """Move each experiment's lineage beyond ``[lineage] redis_window`` to its store (state.archive)."""
        for e, cfg in configs.items():
            with self.isolated("archive", e):
                keep = tracking_floor(self.r, e, "lineage") if cfg.tracking else None
                self.stats["archived"] += archive(self.r, self.store(e), e, cfg.lineage.redis_window, keep_from=keep)

    def ended(self, ended: dict[str, Experiment], now: float) -> None:
        """Experiments that stopped running: a last collection leaves each member's final checkpoint
        and nothing else, their events streams are emptied and their lineage archived down to the
        window; on a cluster their queued jobs are drained (no worker sweeps them)."""
        if not ended:
            return
        self.collect_garbage(ended, now, final=True)
        self.trim_boards(ended, everything=True)
        if self.events_retention_s >= 0:
            for e, cfg in ended.items():
                try:
                    self.stats["trimmed"] += empty_events(self.r, e, bool(cfg.tracking))
                except redis.RedisError as exc:
                    log.warning("trim: %s: %s", e, exc)
        self.archive(ended)
        if is_cluster(self.r):
            for e, cfg in ended.items():
                try:
                    drain(self.r, cfg.queue, e)
                except REDIS_ERRORS as exc:
                    log.warning("%s: could not drain its queue: %s", e, exc)
        for e in ended:
            self.stores.pop(e, None)
            self._gc_at.pop(e, None)

    @contextmanager
    def isolated(self, what: str, exp: str) -> Iterator[None]:
        """One experiment's share of a maintenance pass: Redis or store trouble is logged and retried next
        pass; anything else (a record written by hand that no release writes) is logged once, with the
        experiment, and that experiment's share skipped, so one bad record never stops the daemon."""
        try:
            yield
        except (redis.RedisError, StoreError) as exc:
            log.warning("%s: %s: %s", what, exp, exc)
            if misplaced_key(exc) and exp in self.configs and what != "repair":  # a key of another type: aside
                with self.isolated("repair", exp):
                    repair(self.r, exp, self.configs[exp])
        except Exception as exc:  # noqa: BLE001 - isolation is the point: every other experiment goes on
            said = (what, exp, type(exc).__name__, str(exc))
            if said not in self._reported:
                self._reported.add(said)
                log.error("%s: %s: skipped (%s: %s); a record of this experiment is not what any release writes: "
                          "fix or delete it with redis-cli (this is said once)", what, exp, type(exc).__name__, exc)

    def store(self, exp: str) -> Store:
        if exp not in self.stores:
            url = Meta.read(self.r, Keys(exp).meta, "store").store
            if not url:
                raise StoreError(f"experiment {exp}: no store URL in its meta hash")
            self.stores[exp] = open_store(url)
        return self.stores[exp]
