"""``open_store(url)``: the store a URL names."""

from __future__ import annotations

import importlib

from pbt_mq.store.base import Store, StoreError
from pbt_mq.store.local import LocalStore


def open_store(url: str) -> Store:
    """``s3://bucket/prefix?endpoint=...`` or ``file:///abs/path`` (a plain path is a directory too)."""
    if url.startswith("s3://"):
        # the S3 store imports minio (~0.2 s); every command opens a store, few of them an S3 one
        return importlib.import_module("pbt_mq.store.s3").S3Store(url)
    if url.startswith("file://"):
        # Taken verbatim (no %-decoding, '?' and '#' are part of the name), as `pbt launch` writes it.
        path = url[len("file://") :]
        if path.startswith("localhost/"):
            path = path[len("localhost") :]
        if path and not path.startswith("/"):  # file://data/ckpt would otherwise mean /ckpt or ./data/ckpt
            raise StoreError(f"store URL {url!r}: a file:// URL needs an absolute path, e.g. file:///data/ckpt")
        return LocalStore(path)
    if "://" in url:
        raise StoreError(f"store URL {url!r}: scheme must be file:// or s3://")
    return LocalStore(url)
