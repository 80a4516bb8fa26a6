"""What every checkpoint store is: a Protocol, its errors, retries, and hashing while writing.

Objects are immutable (written once under unique keys) and checked by sha256. A checkpoint goes
up straight from its tensors' memory (``put_buffers``: no scratch copy) and comes down into one
buffer that its tensors then view (``fetch_bytes``), hashed while it arrives, so it is never
held twice in memory.
``store.open.open_store(url)`` picks the backend: ``store.local`` (a directory) or ``store.s3``
(any S3 API through the ``minio`` client).
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol, TypeVar

from pbt_mq.core.protocol import CheckpointRef, checkpoint_key_problem
from pbt_mq.core.settings import read as setting

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
READ_CHUNK = 4 << 20  # a download into memory: read and hashed in pieces this big, overlapped
PART_SIZE = 32 << 20  # S3 multipart part size (the minimum is 5 MiB, the most parts 10,000)
PARALLEL_HASH_MIN = 1 << 20  # writes at least this big are hashed on a helper thread


class StoreError(RuntimeError):
    """The store failed or was misconfigured; the text says what to do."""


class MissingObject(StoreError):
    pass


class ChecksumError(StoreError):
    pass


class StoreUnavailable(StoreError):
    """The endpoint could not be reached or dropped the connection: worth retrying."""


def retrying(fn: Callable[[], T], what: str, budget_s: float | None = None) -> T:
    """Run ``fn``, retrying StoreUnavailable with exponential backoff for up to ``budget_s``.

    A store that is down for a while (a MinIO restart, a network blip) delays a segment
    instead of failing it. The budget defaults to PBT_STORE_RETRY_S (120 s).
    """
    budget = setting("PBT_STORE_RETRY_S") if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = 0.25
    while True:
        try:
            return fn()
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise StoreUnavailable(f"{exc}; gave up after retrying for {budget:.0f} s") from None
            log.warning("%s: %s; retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


class Store(Protocol):
    url: str

    def put_file(self, key: str, path: str, sha256: str, size: int) -> None:
        """Write ``path`` under ``key`` once; an existing key is never replaced."""
        ...

    def get_to(self, key: str, out: BinaryIO) -> tuple[str, int]:
        """Stream the object into ``out``; return (sha256, size) of what was read."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str = "") -> Iterator[str]: ...

    def check(self) -> None:
        """Fail with a clear StoreError if the store cannot be used."""
        ...

    def fetch_verified(self, ref: CheckpointRef) -> AbstractContextManager[str]:
        """A local path holding ``ref``'s bytes, verified against its sha256 and size (a context)."""
        ...

    def scratch_dir(self) -> str | None:
        """Where to write a checkpoint before ``put_file`` (a local store: inside it, so a put is a link)."""
        ...

    def put_buffers(self, key: str, buffers: list[memoryview], sha256: str, size: int) -> None:
        """``put_file`` of the concatenated buffers, written straight from them (no scratch copy)."""
        ...

    def fetch_bytes(self, ref: CheckpointRef) -> Any:
        """``ref``'s bytes in a new writable buffer, verified against its sha256 and size."""
        ...


class HashingWriter:
    """A write-only file wrapper that hashes as it writes (one pass, no second read).

    A big write (torch.save hands over each tensor's storage in one call) is hashed on a
    helper thread while this thread writes it to the file, and joined before ``write``
    returns, so a buffer that is only valid during the call (torch passes a memoryview
    of the tensor) is never read after it."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        n = memoryview(data).nbytes
        self.size += n
        if n < PARALLEL_HASH_MIN:
            self.h.update(data)
            return self.f.write(data)
        done = _hash_pool().submit(self.h.update, data)
        try:
            return self.f.write(data)
        finally:
            done.result()

    def flush(self) -> None:
        self.f.flush()

    @property
    def sha256(self) -> str:
        return self.h.hexdigest()


_pool = None
_pool_lock = threading.Lock()


def _hash_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(2, thread_name_prefix="pbt-hash")
        return _pool


_ordered = None


def _ordered_pool() -> ThreadPoolExecutor:
    """One thread: what is submitted runs in order (a hash fed chunk by chunk)."""
    global _ordered
    with _pool_lock:
        if _ordered is None:
            _ordered = ThreadPoolExecutor(1, thread_name_prefix="pbt-hash-seq")
        return _ordered


class PipelinedHash:
    """sha256 of chunks fed in order, computed on a helper thread while the caller fetches the next
    (hashlib releases the GIL): a download is hashed as it arrives, not in a second pass."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0
        self._last: Any = None

    def feed(self, chunk: memoryview) -> None:
        self.size += chunk.nbytes
        self._last = _ordered_pool().submit(self.h.update, chunk)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self.h.hexdigest()

    def wait(self) -> None:
        """Let every fed chunk be hashed (before its buffer is given up, e.g. on an error)."""
        if self._last is not None:
            self._last.result()


def hash_buffers(buffers: list[memoryview]) -> tuple[str, int]:
    """sha256 and size of the buffers' concatenation."""
    h = hashlib.sha256()
    for b in buffers:
        h.update(b)
    return h.hexdigest(), sum(b.nbytes for b in buffers)


def new_buffer(size: int) -> memoryview:
    """A writable buffer of ``size`` bytes whose pages are not touched until written (anonymous
    mmap; a bytearray would zero them all first), freed when the last view of it goes."""
    if size == 0:
        return memoryview(bytearray())
    return memoryview(mmap.mmap(-1, size))


class _DownloadBuffers:
    """Where downloads land: the last download's buffer again, once nothing uses it any more.

    A checkpoint's tensors are views of the buffer it was downloaded into; a trainable that copies
    them into its model (``load_state_dict`` does) lets the buffer go, and the next download reuses
    its memory instead of faulting in fresh pages (first-touching memory costs as much as hashing
    it). Whether anything still uses the buffer is its reference count: every view (a memoryview, a
    tensor from ``torch.frombuffer``, a numpy array) holds a reference; only ours are left when free."""

    def __init__(self) -> None:
        self._buf: mmap.mmap | None = None
        self._lock = threading.Lock()

    def take(self, size: int) -> memoryview:
        if size == 0:
            return memoryview(bytearray())
        with self._lock:
            buf = self._buf
            # ours: self._buf and the local name (getrefcount's argument is the third)
            if buf is not None and sys.getrefcount(buf) <= 3 and size <= len(buf) <= 2 * size:
                return memoryview(buf)[:size]
            self._buf = mmap.mmap(-1, size)
            return memoryview(self._buf)

    def clear(self) -> None:
        with self._lock:
            self._buf = None


download_buffers = _DownloadBuffers()


def _after_fork_in_child() -> None:
    # A forked child (an RQ work horse) inherits the pool objects but not their threads.
    global _pool, _pool_lock, _ordered
    _pool, _pool_lock, _ordered = None, threading.Lock(), None
    download_buffers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def verify(ref: CheckpointRef, sha: str, size: int) -> None:
    if sha != ref.sha256 or size != ref.size:
        raise ChecksumError(
            f"checkpoint {ref.key}: sha256 {sha[:12]}… / {size} bytes does not match the recorded"
            f" {ref.sha256[:12]}… / {ref.size} bytes; the object is corrupt or was replaced, refusing to load it"
        )


def check_key(key: str) -> None:
    """The one checkpoint-key rule (``core.protocol.checkpoint_key_problem``), as a StoreError."""
    problem = checkpoint_key_problem(key)
    if problem:
        raise StoreError(f"checkpoint key {problem}")
