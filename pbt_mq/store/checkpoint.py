"""Save and load checkpoints through a Store. Imports torch, so only workers use it.

A checkpoint is ``torch.save({"state": trainable.state_dict(), "step": ..., "hparams": ...})``
written to a scratch file while hashing (one pass), uploaded under an immutable key,
and loaded back only after its sha256 is verified, with ``weights_only=True``.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.store.base import HashingWriter, Store, StoreError, retrying


class UnsafeCheckpoint(StoreError):
    """``torch.load(weights_only=True)`` refused the object: it holds more than tensors and plain data."""


def save(store: Store, key: str, obj: Any) -> CheckpointRef:
    import torch  # a worker's dependency: the CLI and arbiter import this module without torch

    fd, tmp = tempfile.mkstemp(prefix="pbt-save-", suffix=".pt", dir=store.scratch_dir())
    try:
        with os.fdopen(fd, "wb") as f, _no_zip_crc32():
            w = HashingWriter(f)
            torch.save(obj, w)
        retrying(lambda: store.put_file(key, tmp, w.sha256, w.size), f"upload {key}")
        return CheckpointRef(key=key, sha256=w.sha256, size=w.size)
    finally:
        os.unlink(tmp)


def serialize(obj: Any) -> tuple[memoryview, str, int]:
    """``torch.save`` into memory, hashed in the same pass: (bytes, sha256, size)."""
    import torch  # a worker's dependency: the CLI and arbiter import this module without torch

    buf = io.BytesIO()
    with _no_zip_crc32():
        w = HashingWriter(buf)
        torch.save(obj, w)
    return buf.getbuffer(), w.sha256, w.size


def upload(store: Store, key: str, data: memoryview, sha256: str) -> None:
    """Put serialized bytes under ``key`` (through a scratch file, as ``save`` does)."""
    fd, tmp = tempfile.mkstemp(prefix="pbt-save-", suffix=".pt", dir=store.scratch_dir())
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        retrying(lambda: store.put_file(key, tmp, sha256, len(data)), f"upload {key}")
    finally:
        os.unlink(tmp)


def load(store: Store, ref: CheckpointRef, map_location: str = "cpu") -> Any:
    """Download (retrying while the store is unreachable), verify the sha256, then load safely."""
    return retrying(lambda: _load_once(store, ref, map_location), f"download {ref.key}")


def _load_once(store: Store, ref: CheckpointRef, map_location: str) -> Any:
    import torch  # a worker's dependency: the CLI and arbiter import this module without torch

    with store.fetch_verified(ref) as path:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's text suggests retrying with weights_only=False: for a worker that would
            # run whatever a peer wrote into the store, so say what was refused instead.
            why = [
                line.strip()
                for line in str(exc).splitlines()
                if line.strip() and "weights_only" not in line.lower() and "weights only" not in line.lower()
            ]
            raise UnsafeCheckpoint(
                f"checkpoint {ref.key}: refused by torch.load(weights_only=True)"
                f" ({why[0] if why else type(exc).__name__}): it holds objects other than tensors and plain"
                " data. If your trainable's state_dict() returns such objects, convert them or allow them with"
                " torch.serialization.add_safe_globals; never load a store's objects with weights_only=False"
            ) from None


# torch.save computes a CRC32 of every zip record by default; it costs about a third of
# save time, and the sha256 we compute in the same pass already covers every byte (and is
# checked before every load; torch.load never checks the CRC). The switch is process-wide
# in torch, so it is turned off only while a save runs and counted, so that overlapping
# saves in several threads restore the user's setting exactly once, at the end.
_crc_lock = threading.Lock()
_crc_users = 0
_crc_saved: bool | None = None


@contextmanager
def _no_zip_crc32() -> Iterator[None]:
    global _crc_users, _crc_saved
    try:
        from torch.serialization import get_crc32_options, set_crc32_options
    except ImportError:  # torch < 2.6: always computed
        yield
        return
    with _crc_lock:
        if _crc_users == 0:
            _crc_saved = get_crc32_options()
            set_crc32_options(False)
        _crc_users += 1
    try:
        yield
    finally:
        with _crc_lock:
            _crc_users -= 1
            if _crc_users == 0 and _crc_saved is not None:
                set_crc32_options(_crc_saved)
