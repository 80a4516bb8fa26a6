"""Save and load checkpoints through a Store. Imports torch, so only workers use it.

A checkpoint is ``torch.save({"state": trainable.state_dict(), "step": ..., "hparams": ...})``
written to a scratch file while hashing (one pass), uploaded under an immutable key,
and loaded back only after its sha256 is verified, with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from .protocol import CheckpointRef
from .store import HashingWriter, LocalStore, Store, fetch_verified


def scratch_dir(store: Store) -> str | None:
    """Where to write before upload: inside a local store, so publishing is a hard link."""
    if isinstance(store, LocalStore):
        d = store.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)
    return None


def save(store: Store, key: str, obj: Any) -> CheckpointRef:
    import torch

    fd, tmp = tempfile.mkstemp(prefix="pbt-save-", suffix=".pt", dir=scratch_dir(store))
    try:
        with os.fdopen(fd, "wb") as f:
            w = HashingWriter(f)
            torch.save(obj, w)
        store.put_file(key, tmp, w.sha256, w.size)
        return CheckpointRef(key=key, sha256=w.sha256, size=w.size)
    finally:
        os.unlink(tmp)


def load(store: Store, ref: CheckpointRef, map_location: str = "cpu") -> Any:
    import torch

    with fetch_verified(store, ref) as path:
        return torch.load(path, map_location=map_location, weights_only=True)
