"""``pbt bench``: measure a deployment's checkpoint data plane against its raw limit.

For each state-dict size it times pbt-mq's save (torch.save + sha256 + upload) and
load (download + verify + torch.load), and, in the same run, a raw ``minio``
put/get (or a raw file write/read for a file:// store) of the same number of bytes,
already serialized. The ratio is the figure: how close checkpointing runs to the
store's own speed. The raw get discards what it reads, so the load ratio also pays
for what any loader must do: hash every byte and build the tensors.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .store import CHUNK, PART_SIZE, S3Store, StoreError, open_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("PBT_STORE_URL"), help="store URL (env PBT_STORE_URL; default: a temp dir)")
    p.add_argument("--sizes-mb", default="50,500", help="comma-separated state-dict sizes in MB")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is reported)")
    p.add_argument("--quick", action="store_true", help="small and fast: 8 MB, 1 run (a CI smoke test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--data", action="store_true", help="the checkpoint data plane (the default when no part is named)")
    p.add_argument("--control", action="store_true",
                   help="the arbiter: decisions/s and latency per population, and 1/2/4 replicas with Redis CPU")
    p.add_argument("--fleet", action="store_true",
                   help="real workers: time in user code, warm segments, bytes per exploit, segments/s")
    p.add_argument("--all", action="store_true", help="data, control and fleet")
    p.add_argument("--populations", default="16,256,4096", help="with --control: population sizes")
    p.add_argument("--replicas", default="1,2,4", help="with --control: arbiter replica counts")
    p.add_argument("--workers", type=int, default=2, help="with --fleet: pbt-worker processes (default 2)")
    p.add_argument("--model-mb", type=float, default=50.0, help="with --fleet: the model's state size")
    p.add_argument("--redis", default=os.environ.get("PBT_REDIS_URL"),
                   help="with --control: a Redis it may write bench experiments to (env PBT_REDIS_URL;"
                        " default: a private redis-server)")
    p.set_defaults(fn=run)


def make_state(size_mb: float) -> dict[str, Any]:
    import torch

    n = int(size_mb * 1e6 / 4)
    chunks = 8
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(n // chunks, generator=g) for i in range(chunks)}


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def _raw_ops(store: Any, data: bytes) -> tuple[Any, Any, Any]:
    """(put(key), get(key), delete(key)) of the bare bytes, bypassing pbt-mq: the store's own speed."""
    if isinstance(store, S3Store):

        def put(key: str) -> None:
            # The same part size as pbt-mq's uploads, so both send the same requests;
            # minio's own parallelism (3 parts at once, all parts queued in memory).
            store.client.put_object(
                store.bucket, store._name(key), io.BytesIO(data), len(data), part_size=PART_SIZE
            )

        def get(key: str) -> None:
            resp = store.client.get_object(store.bucket, store._name(key))
            try:
                for _ in resp.stream(CHUNK):
                    pass
            finally:
                resp.close()
                resp.release_conn()

        return put, get, store.delete

    def fput(key: str) -> None:
        path = store.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def fget(key: str) -> None:
        with open(store.path(key), "rb") as f:
            while f.read(CHUNK):
                pass

    def fdel(key: str) -> None:
        store.path(key).unlink(missing_ok=True)

    return fput, fget, fdel


def measure(store_url: str, sizes_mb: list[float], repeat: int) -> list[dict[str, Any]]:
    """Raw and pbt-mq runs alternate (put, save, put, save, ...; then get, load, ...), each on a
    fresh key, so that a store whose speed drifts (caches filling, a busy server) weighs on both."""
    import torch

    from . import checkpoint

    store = open_store(store_url)
    store.check()
    rows = []
    run_id = secrets.token_hex(4)
    for size in sizes_mb:
        state = make_state(size)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        del buf
        mb = len(data) / 1e6
        raw_put, raw_get, raw_delete = _raw_ops(store, data)
        raw_keys = [f"bench-{run_id}/raw-{size:g}-{i}" for i in range(repeat)]
        refs: list[Any] = []
        t: dict[str, list[float]] = {"put": [], "save": [], "get": [], "load": []}
        try:
            for i in range(repeat):
                t["put"].append(_timed(raw_put, raw_keys[i])[0])
                took, ref = _timed(checkpoint.save, store, f"bench-{run_id}/ckpt-{size:g}-{i}", state)
                t["save"].append(took)
                refs.append(ref)
            del data
            for _ in range(repeat):
                t["get"].append(_timed(raw_get, raw_keys[0])[0])
                t["load"].append(_timed(checkpoint.load, store, refs[0])[0])
        finally:
            for key in raw_keys:
                raw_delete(key)
            for ref in refs:
                store.delete(ref.key)
        m = {k: statistics.median(v) for k, v in t.items()}
        rows.append(
            {
                "size_mb": round(mb, 1),
                "save_mb_s": mb / m["save"],
                "raw_put_mb_s": mb / m["put"],
                "save_ratio": m["put"] / m["save"],
                "load_mb_s": mb / m["load"],
                "raw_get_mb_s": mb / m["get"],
                "load_ratio": m["get"] / m["load"],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], store_url: str) -> str:
    head = f"checkpoint data plane on {store_url}\n"
    head += f"{'size MB':>8} | {'save+upload MB/s':>16} {'raw put MB/s':>12} {'ratio':>6} | {'download+load MB/s':>18} {'raw get MB/s':>12} {'ratio':>6}\n"
    head += "-" * 96 + "\n"
    for r in rows:
        head += (
            f"{r['size_mb']:>8} | {r['save_mb_s']:>16.1f} {r['raw_put_mb_s']:>12.1f} {r['save_ratio']:>6.2f} |"
            f" {r['load_mb_s']:>18.1f} {r['raw_get_mb_s']:>12.1f} {r['load_ratio']:>6.2f}\n"
        )
    return head


def run_control(a: argparse.Namespace) -> dict[str, Any]:
    from .bench_control import measure, measure_replicas
    from .redisconn import connect, redact

    try:
        pops = [int(x) for x in a.populations.split(",") if x.strip()]
        reps = [int(x) for x in a.replicas.split(",") if x.strip()]
    except ValueError:
        raise StoreError("--populations/--replicas: give comma-separated whole numbers, e.g. 16,256,4096") from None
    if not pops or not reps or min(pops + reps) < 1:
        raise StoreError("--populations/--replicas: give one or more numbers of at least 1")
    with _redis_for_bench(a.redis) as url:
        r = connect(url)
        rows = [measure(r, n, 200 if a.quick else max(4000, 2 * n), 20 if a.quick else 1000)
                for n in ([16] if a.quick else pops)]
        big = 64 if a.quick else max(pops)
        replicas = [measure_replicas(url, n, big, rounds=1 if a.quick else 2) for n in ([1, 2] if a.quick else reps)]
    return {"redis": redact(a.redis or "a private redis-server"), "control_plane": rows, "replicas": replicas}


@contextmanager
def _redis_for_bench(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from .local import private_redis

    with tempfile.TemporaryDirectory(prefix="pbt-bench-redis-") as tmp:
        with private_redis(Path(tmp)) as private:
            yield private


def run_fleet(a: argparse.Namespace) -> list[dict[str, Any]]:
    from .bench_fleet import measure_fleet

    w = a.workers
    if w < 1:
        raise StoreError("--workers must be at least 1")
    if a.quick:
        plan = [(w, 3, 0.05, 1.0, True), (2 * w, 5, 0.0, 0.01, False)]
    else:
        mb = a.model_mb
        plan = [(pop, segs, seg_s, mb, overlap) for seg_s, segs in ((0.5, 10), (5.0, 4))
                for pop in (w, 4 * w) for overlap in (False, True)]
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


def run(a: argparse.Namespace) -> int:
    from .bench_control import format_control, format_replicas
    from .bench_fleet import format_fleet

    parts = {"data": a.data or a.all, "control": a.control or a.all, "fleet": a.fleet or a.all}
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
    if parts["fleet"]:
        out["fleet"] = run_fleet(a)
        if not a.json:
            sys.stdout.write("\nfleet: real pbt-worker processes and one arbiter on this machine (file:// store)\n")
            sys.stdout.write(format_fleet(out["fleet"]))
    if a.json:
        print(json.dumps(out, indent=2))
    return 0
