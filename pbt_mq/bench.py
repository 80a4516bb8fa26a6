"""``pbt bench``: measure a deployment's checkpoint data plane against its raw limit.

For each state-dict size it times pbt-mq's save (torch.save + sha256 + upload) and
load (download + verify + torch.load), and, in the same run, a raw ``minio``
put/get (or a raw file write/read for a file:// store) of the same number of bytes.
The ratio is the figure: how close checkpointing runs to the store's own speed.
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
from typing import Any

from .store import S3Store, open_store


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=os.environ.get("PBT_STORE_URL"), help="store URL (env PBT_STORE_URL; default: a temp dir)")
    p.add_argument("--sizes-mb", default="50,500", help="comma-separated state-dict sizes in MB")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is reported)")
    p.add_argument("--quick", action="store_true", help="small and fast: 8 MB, 1 run (a CI smoke test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(fn=run)


def make_state(size_mb: float) -> dict[str, Any]:
    import torch

    n = int(size_mb * 1e6 / 4)
    chunks = 8
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(n // chunks, generator=g) for i in range(chunks)}


def _time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _raw_ops(store: Any, data: bytes, key: str) -> tuple[Any, Any]:
    if isinstance(store, S3Store):
        name = store._name(key)

        def put() -> None:
            store.client.put_object(store.bucket, name, io.BytesIO(data), len(data), part_size=64 << 20)

        def get() -> None:
            resp = store.client.get_object(store.bucket, name)
            try:
                for _ in resp.stream(1 << 20):
                    pass
            finally:
                resp.close()
                resp.release_conn()

        return put, get
    path = store.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)

    def fput() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()

    def fget() -> None:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass

    return fput, fget


def measure(store_url: str, sizes_mb: list[float], repeat: int) -> list[dict[str, Any]]:
    import torch

    from . import checkpoint

    store = open_store(store_url)
    store.check()
    rows = []
    run = secrets.token_hex(4)
    for size in sizes_mb:
        state = make_state(size)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        del buf
        mb = len(data) / 1e6
        raw_put, raw_get = _raw_ops(store, data, f"bench-{run}/raw-{size}")
        t_raw_put = _time(raw_put, repeat)
        t_raw_get = _time(raw_get, repeat)
        del data
        refs = []
        t_save = _time(lambda: refs.append(checkpoint.save(store, f"bench-{run}/ckpt-{size}-{len(refs)}", state)), repeat)
        t_load = _time(lambda: checkpoint.load(store, refs[0]), repeat)
        for ref in refs:
            store.delete(ref.key)
        store.delete(f"bench-{run}/raw-{size}")
        rows.append(
            {
                "size_mb": round(mb, 1),
                "save_mb_s": mb / t_save,
                "raw_put_mb_s": mb / t_raw_put,
                "save_ratio": t_raw_put / t_save,
                "load_mb_s": mb / t_load,
                "raw_get_mb_s": mb / t_raw_get,
                "load_ratio": t_raw_get / t_load,
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


def run(a: argparse.Namespace) -> int:
    sizes = [8.0] if a.quick else [float(s) for s in a.sizes_mb.split(",") if s.strip()]
    repeat = 1 if a.quick else a.repeat
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as tmp:
        url = a.store or f"file://{tmp}"
        rows = measure(url, sizes, repeat)
    if a.json:
        print(json.dumps({"store": url, "data_plane": rows}, indent=2))
    else:
        sys.stdout.write(format_table(rows, url))
    return 0

