"""Save and load checkpoints through a Store, in the format their experiment uses.

Experiments of this release (meta ``schema`` >= 3) write ``store.format``: safetensors with the
rest of the state in msgpack, no pickle anywhere, key extension ``.safetensors``. Experiments
launched by earlier releases keep writing ``torch.save`` files (``.pt``), because their workers
of those releases, still running during a rolling upgrade, read nothing else; those load with
``torch.load(weights_only=True)``. Either way the object is written once under an immutable key
with its sha256, and loaded only after the sha256 matches. ``load_checkpoint(path)`` is the
public reader of an exported checkpoint.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.store import format_read
from pbt_mq.store.base import (
    ChecksumError,
    HashingWriter,
    Store,
    StoreError,
    hash_buffers,
    new_buffer,
    retrying,
)
from pbt_mq.store.format import FormatError, encode

EXT = "safetensors"  # this release's format
LEGACY_EXT = "pt"  # torch.save, for experiments launched by earlier releases
FORMAT_SCHEMA = 3  # the first meta schema whose experiments use EXT


def extension(schema: int) -> str:
    """The checkpoint format (as a key extension) of an experiment launched with meta ``schema``."""
    return EXT if schema >= FORMAT_SCHEMA else LEGACY_EXT


def is_legacy(key: str) -> bool:
    return key.endswith(f".{LEGACY_EXT}")


class UnsafeCheckpoint(StoreError):
    """The object is not a checkpoint that loads without running code: a pickle, malformed or truncated
    (this format), or refused by ``torch.load(weights_only=True)`` (an earlier release's ``.pt``)."""


def save(store: Store, key: str, obj: Any) -> CheckpointRef:
    """Serialize (without copying a CPU tensor's bytes), hash, upload; the key's extension picks the format."""
    if is_legacy(key):
        return _save_legacy(store, key, obj)
    enc = encode(obj)
    sha256, size = hash_buffers(enc.buffers)
    retrying(lambda: store.put_buffers(key, enc.buffers, sha256, size), f"upload {key}")
    return CheckpointRef(key=key, sha256=sha256, size=size)


def serialize(obj: Any, key: str) -> tuple[memoryview, str, int]:
    """A copy of the object's bytes, hashed: (bytes, sha256, size). A copy, because it is uploaded
    while the next segment trains and changes the tensors (``worker.overlap_upload``)."""
    if is_legacy(key):
        return _serialize_legacy(obj)
    enc = encode(obj)
    out = new_buffer(enc.size)
    off = 0
    for b in enc.buffers:
        out[off:off + b.nbytes] = b
        off += b.nbytes
    sha256, size = hash_buffers([out])
    return out, sha256, size


def upload(store: Store, key: str, data: memoryview, sha256: str) -> None:
    """Put serialized bytes under ``key``."""
    retrying(lambda: store.put_buffers(key, [data], sha256, len(data)), f"upload {key}")


def load(store: Store, ref: CheckpointRef, map_location: str = "cpu", legacy_ok: bool = False) -> Any:
    """Download (retrying while the store is unreachable), verify the sha256, then decode safely.

    ``legacy_ok``: the experiment predates this format, and its ``.pt`` objects load with
    ``torch.load(weights_only=True)``; otherwise only this format loads, and a pickle is refused."""
    if legacy_ok and is_legacy(ref.key):
        return retrying(lambda: _load_legacy(store, ref, map_location), f"download {ref.key}")
    return decode(fetch(store, ref), ref, map_location)


def fetch(store: Store, ref: CheckpointRef) -> memoryview:
    """``ref``'s bytes of this format, downloaded (retrying while the store is unreachable) and verified."""
    return retrying(lambda: store.fetch_bytes(ref), f"download {ref.key}")


def decode(buf: Any, ref: CheckpointRef, map_location: str = "cpu") -> Any:
    """Verified bytes of this format (``fetch``, or a worker's cache) to the checkpoint, safely: the
    tensors view ``buf`` on the CPU."""
    try:
        return format_read.decode(buf, f"checkpoint {ref.key}", map_location)
    except FormatError as exc:
        raise UnsafeCheckpoint(str(exc)) from None


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu", sha256: str | None = None) -> Any:
    """Read a checkpoint file (``pbt export`` writes one): ``{"state": ..., "step": ..., "hparams": ...,
    "member": ...}``. A ``.safetensors`` file is decoded with no code execution; a ``.pt`` file of an
    experiment from an earlier release loads with ``torch.load(weights_only=True)``. ``sha256``:
    refuse the file unless it matches (the schedule's ``final.sha256``)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            buf = new_buffer(size)
            got = f.readinto(buf) if size else 0
    except OSError as exc:
        raise StoreError(f"{p}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if got != size:
        raise StoreError(f"{p}: changed while being read")
    if sha256 is not None and hash_buffers([buf])[0] != sha256:
        raise ChecksumError(f"{p}: sha256 does not match the expected {sha256[:12]}…; not loading it")
    if p.suffix == f".{LEGACY_EXT}" and format_read.sniff(bytes(buf[:16])) == "zip":
        import torch  # an earlier release's checkpoint is a torch file

        return torch.load(p, map_location=map_location, weights_only=True)
    return format_read.decode(buf, str(p), map_location, plain_ok=True)


def save_file(path: str | os.PathLike[str], obj: Any) -> str:
    """Write ``obj`` to a checkpoint file in this format (atomically); returns its sha256."""
    enc = encode(obj)
    sha256, _ = hash_buffers(enc.buffers)
    p = Path(path)
    part = p.with_name(f".{p.name}.part")
    try:
        with open(part, "wb") as f:
            for b in enc.buffers:
                f.write(b)
        os.replace(part, p)
    finally:
        part.unlink(missing_ok=True)
    return sha256


def _save_legacy(store: Store, key: str, obj: Any) -> CheckpointRef:
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


def _serialize_legacy(obj: Any) -> tuple[memoryview, str, int]:
    import torch  # a worker's dependency: the CLI and arbiter import this module without torch

    buf = io.BytesIO()
    with _no_zip_crc32():
        w = HashingWriter(buf)
        torch.save(obj, w)
    return buf.getbuffer(), w.sha256, w.size


def _load_legacy(store: Store, ref: CheckpointRef, map_location: str) -> Any:
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
