"""The control-plane benchmark: one arbiter fed by a synthetic event source, no workers.

It launches a toy-shaped experiment, then repeatedly takes every queued segment (as
workers would, without training) and publishes a ready event for it, and times the
arbiter's handling of each event: per-decision latency and decisions per second of
arbiter time, for several population sizes. Flat figures across populations are the
point: a decision costs three Redis round trips whatever the population.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import redis

from .arbiter import Arbiter
from .config import parse
from .experiment import launch, queue_for, stop
from .keys import Keys
from .protocol import CheckpointRef, ReadyEvent, SegmentCommand


def synthetic_experiment(population: int, steps: int = 10_000) -> dict[str, Any]:
    return {
        "name": "bench", "trainable": "workers.toy:Toy", "metric": "q", "seed": 0,
        "population": {"size": population}, "ready": {"steps": 4}, "stop": {"steps": steps},
        "hparams": {"h0": {"type": "float", "low": 0.0, "high": 1.0}, "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "gc": {"enabled": False}, "queue": f"pbt-bench-{population}",
    }


def take_commands(r: redis.Redis, queue: str = "pbt") -> list[SegmentCommand]:
    """Pop every queued segment, as a worker would, without running anything."""
    q = queue_for(r, queue)
    cmds = []
    for jid in q.get_job_ids():
        job = q.fetch_job(jid)
        if job is not None:
            cmds.append(SegmentCommand.decode(job.args[0]))
        q.remove(jid)
    return cmds


def fake_event(cmd: SegmentCommand, score: float) -> ReadyEvent:
    step = cmd.until_step or cmd.step + 1
    key = f"{cmd.experiment}/{cmd.member}/{cmd.seq:06d}-s{step}.pt"
    ref = CheckpointRef(key, hashlib.sha256(key.encode()).hexdigest(), 100)
    return ReadyEvent(
        experiment=cmd.experiment, member=cmd.member, seq=cmd.seq, step=step, score=score,
        checkpoint=ref, hparams=cmd.hparams, start_step=cmd.step, start_key=cmd.start.key if cmd.start else None,
    )


def publish(r: redis.Redis, ev: ReadyEvent) -> None:
    r.xadd(Keys(ev.experiment).events, {"member": ev.member, "seq": ev.seq, "msg": ev.encode()})


def measure(r: redis.Redis, population: int, decisions: int) -> dict[str, float]:
    cfg = parse(synthetic_experiment(population))
    exp = launch(r, cfg, "file:///nonexistent")
    arb = Arbiter(r, f"bench-{population}", block_ms=10, reap_interval_s=0)
    arb.refresh()
    latencies: list[float] = []
    handle = arb.handle

    def timed(*args: Any) -> str:
        t = time.perf_counter()
        out = handle(*args)
        latencies.append(time.perf_counter() - t)
        return out

    arb.handle = timed  # type: ignore[method-assign]
    rng = random.Random(0)
    while len(latencies) < decisions:
        cmds = take_commands(r, cfg.queue)
        if not cmds:
            break
        pipe = r.pipeline(transaction=False)
        for cmd in cmds:
            ev = fake_event(cmd, rng.random() * (cmd.until_step or 1))
            pipe.xadd(Keys(ev.experiment).events, {"member": ev.member, "seq": ev.seq, "msg": ev.encode()})
        pipe.execute()
        arb.run(burst=True)
    stop(r, exp, "benchmark finished")
    queue_for(r, cfg.queue).empty()
    latencies.sort()
    return {
        "population": population,
        "decisions": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "decisions_per_s": len(latencies) / sum(latencies),
    }


def format_control(rows: list[dict[str, float]], url: str) -> str:
    out = f"control plane: one arbiter, synthetic events, Redis {url}\n"
    out += f"{'population':>10} | {'decisions':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'decisions/s':>11}\n" + "-" * 58 + "\n"
    for row in rows:
        out += (f"{row['population']:>10} | {row['decisions']:>9} | {row['p50_ms']:>7.2f} | {row['p99_ms']:>7.2f}"
                f" | {row['decisions_per_s']:>11.0f}\n")
    return out
