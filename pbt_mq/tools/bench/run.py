"""``pbt bench`` as a whole: which parts to measure, their settings checked, their tables printed."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbt_mq.broker.connect import connect, redact
from pbt_mq.core.settings import read_if_set
from pbt_mq.store.base import PART_SIZE, StoreError
from pbt_mq.tools.bench.control import format_control, format_replicas, measure_replicas
from pbt_mq.tools.bench.control import measure as measure_control
from pbt_mq.tools.bench.dashboard import format_dashboard, measure_dashboard
from pbt_mq.tools.bench.data import format_table, measure
from pbt_mq.tools.bench.fleet import format_fleet, measure_fleet
from pbt_mq.tools.bench.memory import format_memory, measure_memory
from pbt_mq.tools.bench.pbtcost import format_pbt_cost, measure_pbt_cost
from pbt_mq.tools.redis_server import private_redis


def _numbers(a: argparse.Namespace) -> tuple[list[int], list[int]]:
    try:
        pops = [int(x) for x in a.populations.split(",") if x.strip()]
        reps = [int(x) for x in a.replicas.split(",") if x.strip()]
    except ValueError:
        raise StoreError("--populations/--replicas: give comma-separated whole numbers, e.g. 16,256,4096") from None
    if not pops or not reps or min(pops + reps) < 1:
        raise StoreError("--populations/--replicas: give one or more numbers of at least 1")
    return pops, reps


def run_control(a: argparse.Namespace) -> dict[str, Any]:
    pops, reps = _numbers(a)
    with _redis_for_bench(a.redis or read_if_set("PBT_REDIS_URL")) as url:
        r = connect(url)
        rows = [measure_control(r, n, 200 if a.quick else max(4000, 2 * n), 20 if a.quick else 1000)
                for n in ([16] if a.quick else pops)]
        big = 64 if a.quick else max(pops)
        replicas = [measure_replicas(url, n, big, rounds=1 if a.quick else 2) for n in ([1, 2] if a.quick else reps)]
        memory = measure_memory(r, 16, 50, (200, 600)) if a.quick else measure_memory(r, 16, 500, (2000, 20_000))
    return {"redis": redact(a.redis or read_if_set("PBT_REDIS_URL") or "a private redis-server"), "control_plane": rows,
            "replicas": replicas, "redis_memory": memory}


@contextmanager
def _redis_for_bench(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="pbt-bench-redis-") as tmp:
        with private_redis(Path(tmp)) as private:
            yield private


def run_dashboard(a: argparse.Namespace) -> dict[str, Any]:
    pops, _ = _numbers(a)
    if a.clients < 1 or a.repeat < 1:
        raise StoreError("--clients and --repeat must be at least 1")
    with _redis_for_bench(a.redis or read_if_set("PBT_REDIS_URL")) as url:
        if a.quick:
            rows = measure_dashboard(url, [16], min(a.clients, 2), 200, 20, 1)
        else:
            rows = measure_dashboard(url, pops, a.clients, max(4000, 2 * max(pops)), 1000, a.repeat)
    return {"dashboard": rows}


def run_fleet(a: argparse.Namespace) -> list[dict[str, Any]]:
    w = a.workers
    if w < 1:
        raise StoreError("--workers must be at least 1")
    if a.quick:
        plan = [(w, 3, 0.05, 1.0, True), (2 * w, 5, 0.0, 0.01, False)]
    else:
        mb = a.model_mb
        plan = [(pop, segs, seg_s, mb, overlap) for seg_s, segs in ((0.5, 10), (5.0, 4))
                for pop in (w, 4 * w) for overlap in (False, True)]
        plan += [(pop, 10, 0.5, 0.01, False) for pop in (w, 4 * w)]  # pbt-mq's own cost, no checkpoint I/O
        plan.append((8 * w, 20, 0.0, 0.01, False))
    return [measure_fleet(w, pop, segs, seg_s, mb, overlap) for pop, segs, seg_s, mb, overlap in plan]


def run_data(a: argparse.Namespace) -> dict[str, Any]:
    try:
        sizes = [8.0] if a.quick else [float(s) for s in a.sizes_mb.split(",") if s.strip()]
    except ValueError:
        raise StoreError(f"--sizes-mb {a.sizes_mb!r}: give comma-separated numbers, e.g. 50,500") from None
    if not sizes or any(x <= 0 for x in sizes):
        raise StoreError(f"--sizes-mb {a.sizes_mb!r}: give one or more sizes above 0")
    repeat = 1 if a.quick else a.repeat
    if repeat < 1:
        raise StoreError("--repeat must be at least 1")
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as tmp:
        url = a.store or f"file://{tmp}"
        rows = measure(url, sizes, repeat)
    return {"store": url, "repeat": repeat, "part_size_mb": PART_SIZE / 2**20, "data_plane": rows}


def run_pbt_cost(a: argparse.Namespace) -> dict[str, Any]:
    if not Path(a.pbt_cost).is_file():
        raise StoreError(f"--pbt-cost {a.pbt_cost}: no such experiment file")
    if a.workers < 1 or a.repeat < 1:
        raise StoreError("--workers and --repeat must be at least 1")
    return measure_pbt_cost(a.pbt_cost, a.workers, 1 if a.quick else a.repeat)


def run(a: argparse.Namespace) -> int:
    parts = {"data": a.data or a.all, "control": a.control or a.all, "fleet": a.fleet or a.all,
             "dashboard": a.dashboard, "pbt_cost": bool(a.pbt_cost)}
    if not any(parts.values()):
        parts["data"] = True
    out: dict[str, Any] = {}
    if parts["data"]:
        out.update(run_data(a))
        if not a.json:
            sys.stdout.write(format_table(out["data_plane"], out["store"]))
    if parts["control"]:
        out.update(run_control(a))
        if not a.json:
            sys.stdout.write("\n" + format_control(out["control_plane"], out["redis"]) + "\n")
            sys.stdout.write("arbiter replicas, one consumer group, synthetic events\n")
            sys.stdout.write(format_replicas(out["replicas"]) + "\n")
            sys.stdout.write(format_memory(out["redis_memory"]) + "\n")
    if parts["fleet"]:
        out["fleet"] = run_fleet(a)
        if not a.json:
            sys.stdout.write("\nfleet: real pbt-worker processes and one arbiter on this machine (file:// store)\n")
            sys.stdout.write(format_fleet(out["fleet"]))
    if parts["dashboard"]:
        out.update(run_dashboard(a))
        if not a.json:
            sys.stdout.write("\ndashboard: one arbiter deciding synthetic events (as --control), with no page and with"
                             " N pages of one `pbt dashboard` open on the experiment, alternating\n")
            sys.stdout.write(format_dashboard(out["dashboard"]))
    if parts["pbt_cost"]:
        out["pbt_cost"] = run_pbt_cost(a)
        if not a.json:
            sys.stdout.write("\n" + format_pbt_cost(out["pbt_cost"]))
    if a.json:
        print(json.dumps(out, indent=2))
    return 0
