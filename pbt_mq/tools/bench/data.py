"""``pbt bench``: measure a deployment's checkpoint data plane against its raw limit.

For each state-dict size it times pbt-mq's save (``store.format`` + sha256 + upload) and
load (download + verify + decode), and, in the same run, a raw ``minio``
put/get (or a raw file write/read for a file:// store) of the same bytes,
already serialized. The ratio is the figure: how close checkpointing runs to the
store's own speed. The raw get discards what it reads (into one reused 1 MiB chunk), so the
load ratio also pays for what any loader must do: land every byte in memory, hash it and
build the tensors.
"""

from __future__ import annotations

import secrets
import statistics
import time
from typing import Any

from pbt_mq.store import checkpoint
from pbt_mq.store.base import CHUNK
from pbt_mq.store.format import encode
from pbt_mq.store.open import open_store


def make_state(size_mb: float) -> dict[str, Any]:
    import torch  # real tensors: a worker's dependency, not the CLI's

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
    if store.url.startswith("s3://"):  # an S3Store: its minio client, bypassing pbt-mq

        def put(key: str) -> None:
            # The same part size as pbt-mq's uploads, so both send the same requests;
            # minio's own parallelism (3 parts at once, all parts queued in memory).
            store.client.raw_put(store.name(key), data)

        def get(key: str) -> None:
            for _ in store.client.chunks(store.name(key), CHUNK):
                pass

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
    store = open_store(store_url)
    store.check()
    rows = []
    run_id = secrets.token_hex(4)
    for size in sizes_mb:
        state = make_state(size)
        data = b"".join(encode(state).buffers)
        mb = len(data) / 1e6
        raw_put, raw_get, raw_delete = _raw_ops(store, data)
        raw_keys = [f"bench-{run_id}/raw-{size:g}-{i}" for i in range(repeat)]
        refs: list[Any] = []
        t: dict[str, list[float]] = {"put": [], "save": [], "get": [], "load": []}
        try:
            for i in range(repeat):
                t["put"].append(_timed(raw_put, raw_keys[i])[0])
                took, ref = _timed(checkpoint.save, store, f"bench-{run_id}/ckpt-{size:g}-{i}.safetensors", state)
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


