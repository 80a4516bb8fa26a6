"""Redis memory per experiment: flat with the number of segments, given ``[lineage] redis_window``.

A real arbiter (its maintenance included: GC, event trimming, lineage archiving) decides
synthetic ready events (``bench.control``'s source: no workers, no training) for a population;
as workers would, the source registers each event's checkpoint as stored and lets the finished
segment's RQ job hash go (``RESULT_TTL_S``). Redis ``used_memory`` is read after each mark.
Checkpoints do not exist in the store (a scratch directory); GC deletes their bookkeeping only.
"""

from __future__ import annotations

import random
import tempfile
import time
from typing import Any

import redis

from pbt_mq.broker.jobs import queue_for
from pbt_mq.config.parse import parse
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.control.gc import collect
from pbt_mq.control.trim import trim_events
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.state.archive import archive
from pbt_mq.state.experiment import launch, stop
from pbt_mq.store.open import open_store
from pbt_mq.tools.bench.control import fake_event, synthetic_experiment


def _take(r: redis.Redis, queue: str) -> list[SegmentCommand]:
    """Every queued segment, its job hash gone afterwards (a worker's finished job expires in seconds)."""
    q = queue_for(r, queue)
    cmds = []
    for jid in q.get_job_ids():
        job = q.fetch_job(jid)
        if job is not None:
            cmds.append(SegmentCommand.decode(job.args[0]))
            job.delete(remove_from_queue=False)
        q.remove(jid)
    return cmds


def measure_memory(r: redis.Redis, population: int = 16, window: int = 500,
                   marks: tuple[int, ...] = (2000, 20_000)) -> list[dict[str, Any]]:
    raw = synthetic_experiment(population, steps=10**9)
    raw["lineage"] = {"redis_window": window}
    raw["gc"] = {"enabled": True, "min_age_s": 0.0, "interval_s": 0.5}
    cfg = parse(raw)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pbt-bench-memory-") as tmp:
        store = open_store(tmp)
        exp = launch(r, cfg, store.url)
        k = Keys(exp)
        arb = Arbiter(r, f"bench-memory-{population}", block_ms=10, reap_interval_s=0.2, events_retention_s=0.0)
        arb.refresh()
        rng = random.Random(0)
        decided = 0
        t0 = time.perf_counter()
        for mark in marks:
            while decided < mark:
                cmds = _take(r, cfg.queue)
                if not cmds:
                    break
                pipe = r.pipeline(transaction=False)
                for cmd in cmds:
                    ev = fake_event(cmd, rng.random() * (cmd.until_step or 1))
                    pipe.xadd(k.events, {"member": ev.member, "seq": ev.seq, "msg": ev.encode()})
                    pipe.zadd(k.stored, {ev.checkpoint.key: now_ms()})  # as a worker's publish does
                pipe.execute()
                while arb.step():
                    pass
                decided = sum(arb.stats[a] for a in ("continue", "exploit", "done"))
            # what maintenance does on its timers, done now so the figure does not depend on when
            trim_events(r, exp, 0.0, now_ms())
            archive(r, store, exp, window)
            collect(r, exp, cfg, store, min_age_s=0.0)
            time.sleep(0.2)
            rows.append({
                "population": population, "window": window, "segments": decided,
                "used_memory_mb": r.info("memory")["used_memory"] / 1e6,
                "lineage_in_redis": r.xlen(k.lineage), "archived": decided - r.xlen(k.lineage),
                "events_in_redis": r.xlen(k.events), "parents": r.hlen(k.parents),
                "rq_jobs": sum(1 for _ in r.scan_iter(f"rq:job:{exp}*", count=1000)),
                "seconds": time.perf_counter() - t0,
            })
        stop(r, exp, "benchmark finished")
        queue_for(r, cfg.queue).empty()
    return rows


def format_memory(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = (f"Redis memory: population {rows[0]['population']}, lineage.redis_window = {rows[0]['window']}, one arbiter,"
           " synthetic events\n")
    out += (f"{'segments':>8} | {'used_memory MB':>14} | {'lineage in Redis':>16} | {'archived':>8} | {'events':>6}"
            f" | {'parents':>7} | {'RQ jobs':>7}\n") + "-" * 85 + "\n"
    for row in rows:
        out += (f"{row['segments']:>8} | {row['used_memory_mb']:>14.2f} | {row['lineage_in_redis']:>16} |"
                f" {row['archived']:>8} | {row['events_in_redis']:>6} | {row['parents']:>7} | {row['rq_jobs']:>7}\n")
    growth = rows[-1]["used_memory_mb"] - rows[0]["used_memory_mb"]
    out += f"growth from {rows[0]['segments']} to {rows[-1]['segments']} segments: {growth:+.2f} MB\n"
    return out
