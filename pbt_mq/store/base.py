"""What every checkpoint store is: a Protocol, its errors, retries, and hashing while writing.

Objects are immutable (written once under unique keys) and checked by sha256; they stream
through files in both directions, so a checkpoint is never held twice in memory.
``store.open.open_store(url)`` picks the backend: ``store.local`` (a directory) or ``store.s3``
(any S3 API through the ``minio`` client).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol, TypeVar

from pbt_mq.core.protocol import CheckpointRef, checkpoint_key_problem
from pbt_mq.core.settings import read as setting

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
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


def _after_fork_in_child() -> None:
    # A forked child (an RQ work horse) inherits the pool object but not its threads.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


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
