"""The control-plane benchmark: one arbiter fed by a synthetic event source, no workers.

It launches a toy-shaped experiment, then repeatedly takes every queued segment (as
workers would, without training) and publishes a ready event for it: decisions per second
of arbiter time draining those backlogs, and the latency of single events on an idle
arbiter, for several population sizes; then the same backlogs drained by 1, 2, 4 replica
processes, with Redis's CPU. Flat figures across populations are the point: a round of
decisions costs three Redis round trips whatever the population.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import redis

from pbt_mq.broker.connect import connect
from pbt_mq.broker.jobs import queue_for
from pbt_mq.config.parse import parse
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.core.keys import Keys
from pbt_mq.core.protocol import CheckpointRef, ReadyEvent, SegmentCommand
from pbt_mq.state.experiment import launch, stop


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


def _backlog(r: redis.Redis, cfg: Any, rng: random.Random) -> int:
    """Publish a ready event for every queued segment, as workers that train in no time would."""
    cmds = take_commands(r, cfg.queue)
    pipe = r.pipeline(transaction=False)
    for cmd in cmds:
        ev = fake_event(cmd, rng.random() * (cmd.until_step or 1))
        pipe.xadd(Keys(ev.experiment).events, {"member": ev.member, "seq": ev.seq, "msg": ev.encode()})
    pipe.execute()
    return len(cmds)


def _decided(arb: Arbiter) -> int:
    return sum(arb.stats[a] for a in ("continue", "exploit", "done", "duplicate"))


def measure(r: redis.Redis, population: int, decisions: int, latency_samples: int = 200,
            watch: Callable[[str], AbstractContextManager[Any]] | None = None) -> dict[str, float]:
    """Throughput: the arbiter drains backlogs of one event per member (its batched path), timed
    as arbiter wall time. Latency: one event at a time on an idle arbiter, from XADD until the
    member's next segment is queued (what a worker waits when the arbiter keeps up). ``watch``
    (given the experiment id) surrounds both, e.g. with dashboards reading the experiment."""
    cfg = parse(synthetic_experiment(population))
    exp = launch(r, cfg, "file:///nonexistent")
    with watch(exp) if watch else nullcontext():
        row = _measure(r, cfg, exp, population, decisions, latency_samples)
    stop(r, exp, "benchmark finished")
    queue_for(r, cfg.queue).empty()
    return row


def _measure(r: redis.Redis, cfg: Any, exp: str, population: int, decisions: int,
             latency_samples: int) -> dict[str, float]:
    arb = Arbiter(r, f"bench-{population}", block_ms=10, reap_interval_s=0)
    arb.refresh()
    rng = random.Random(0)
    busy_s = 0.0
    while _decided(arb) < decisions:
        if not _backlog(r, cfg, rng):
            break
        while True:  # the arbiter's own loop, less the idle read that ends each backlog
            t = time.perf_counter()
            if not arb.step():
                break
            busy_s += time.perf_counter() - t
    done = _decided(arb)
    latencies: list[float] = []
    while len(latencies) < latency_samples:
        cmds = take_commands(r, cfg.queue)[: latency_samples - len(latencies)]
        if not cmds:
            break
        for cmd in cmds:
            ev = fake_event(cmd, rng.random() * (cmd.until_step or 1))
            t = time.perf_counter()
            publish(r, ev)
            while not arb.step():
                pass
            latencies.append(time.perf_counter() - t)
    latencies.sort()
    return {
        "population": population,
        "decisions": done,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "decisions_per_s": done / busy_s,
    }


def _replica(url: str, name: str, go: Any, out: Any) -> None:
    arb = Arbiter(connect(url), name, block_ms=50, reap_interval_s=0, claim_idle_ms=600_000)
    arb.refresh()
    go.wait()
    arb.run(burst=True)
    out.put(_decided(arb))


def _redis_cpu_s(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_replicas(url: str, replicas: int, population: int, rounds: int = 2) -> dict[str, float]:
    """``replicas`` arbiter processes drain the same backlogs together (one consumer group):
    decisions/s of wall time, and how busy Redis was meanwhile (1.0 = one core)."""
    r = connect(url)
    cfg = parse(synthetic_experiment(population))
    exp = launch(r, cfg, "file:///nonexistent")
    rng = random.Random(0)
    ctx = mp.get_context("fork")
    total, wall, cpu = 0, 0.0, 0.0
    for _ in range(rounds):
        _backlog(r, cfg, rng)
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_replica, args=(url, f"rep{i}", go, out)) for i in range(replicas)]
        for p in procs:
            p.start()
        time.sleep(1.0)  # every replica connected and refreshed
        cpu0, t = _redis_cpu_s(r), time.perf_counter()
        go.set()
        counts = [out.get(timeout=300) for _ in procs]
        wall += time.perf_counter() - t
        cpu += _redis_cpu_s(r) - cpu0
        total += sum(counts)
        for p in procs:
            p.join()
    stop(r, exp, "benchmark finished")
    queue_for(r, cfg.queue).empty()
    return {"replicas": replicas, "population": population, "decisions": total,
            "decisions_per_s": total / wall, "redis_cpu": cpu / wall}


def format_replicas(rows: list[dict[str, float]]) -> str:
    out = f"{'replicas':>8} | {'population':>10} | {'decisions':>9} | {'decisions/s':>11} | {'vs 1':>5} | {'Redis CPU':>9}\n"
    out += "-" * 68 + "\n"
    base = rows[0]["decisions_per_s"] if rows else 1.0
    for row in rows:
        out += (f"{row['replicas']:>8} | {row['population']:>10} | {row['decisions']:>9} | {row['decisions_per_s']:>11.0f}"
                f" | {row['decisions_per_s'] / base:>5.2f} | {row['redis_cpu']:>8.0%}\n")
    return out


def format_control(rows: list[dict[str, float]], url: str) -> str:
    out = f"control plane: one arbiter, synthetic events, Redis {url}\n"
    out += f"{'population':>10} | {'decisions':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'decisions/s':>11}\n" + "-" * 58 + "\n"
    for row in rows:
        out += (f"{row['population']:>10} | {row['decisions']:>9} | {row['p50_ms']:>7.2f} | {row['p99_ms']:>7.2f}"
                f" | {row['decisions_per_s']:>11.0f}\n")
    return out
