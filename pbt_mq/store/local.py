"""A checkpoint store in a local directory (one machine, or a shared filesystem): ``file:///abs/path``."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.store.base import (
    CHUNK,
    READ_CHUNK,
    MissingObject,
    PipelinedHash,
    StoreError,
    check_key,
    download_buffers,
    verify,
)


class LocalStore:
    def __init__(self, root: str):
        if not root:
            raise StoreError("file:// store needs a directory path, e.g. file:///var/pbt/checkpoints")
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key

    def check(self) -> None:
        try:
            (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot create the directory ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store {self.url}: directory is not writable")

    def put_file(self, key: str, path: str, sha256: str, size: int) -> None:
        dest = self.path(key)
        actual = os.path.getsize(path)
        if actual != size:
            raise StoreError(f"checkpoint {key}: {path} holds {actual} bytes, not the recorded {size}")
        exists = StoreError(f"checkpoint {key}: already exists in {self.url}; keys are write-once")
        if dest.exists():
            raise exists
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.part"
        try:
            try:
                os.link(path, tmp)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o444)  # immutable by intent: an accidental open(..., "wb") fails
            try:
                os.link(tmp, dest)  # atomic, and fails if dest exists: write-once
            except FileExistsError:
                raise exists from None
        finally:
            tmp.unlink(missing_ok=True)
        # A human-readable record beside the object; written only by the put that won.
        side = dest.parent / f"{dest.name}.sha256"
        side_tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.sha256.part"
        side_tmp.write_text(f"{sha256} {size}\n")
        os.replace(side_tmp, side)

    def put_buffers(self, key: str, buffers: list[memoryview], sha256: str, size: int) -> None:
        fd, tmp = tempfile.mkstemp(prefix="pbt-save-", suffix=".part", dir=self.scratch_dir())
        try:
            with os.fdopen(fd, "wb") as f:
                for b in buffers:
                    f.write(b)
            self.put_file(key, tmp, sha256, size)
        finally:
            os.unlink(tmp)

    def fetch_bytes(self, ref: CheckpointRef) -> memoryview:
        """Read into a new buffer in chunks, each hashed on a helper thread while the next is read."""
        try:
            f = open(self.path(ref.key), "rb")
        except FileNotFoundError:
            raise MissingObject(f"checkpoint {ref.key}: not found in {self.url}") from None
        with f:
            actual = os.fstat(f.fileno()).st_size
            if actual != ref.size:
                verify(ref, "(not read)", actual)
            buf, h = download_buffers.take(actual), PipelinedHash()
            try:
                off = 0
                while off < actual:
                    n = f.readinto(buf[off:off + READ_CHUNK])
                    if not n:
                        break
                    h.feed(buf[off:off + n])
                    off += n
            finally:
                h.wait()
        verify(ref, h.hexdigest(), off)
        return buf

    def get_to(self, key: str, out: BinaryIO | None) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        try:
            with open(self.path(key), "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if out is not None:
                        out.write(chunk)
        except FileNotFoundError:
            raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
        return h.hexdigest(), size

    def hash_file(self, key: str) -> tuple[str, int]:
        """Hash the object in place: a local load verifies without copying."""
        return self.get_to(key, None)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        (self.path(key).parent / f"{Path(key).name}.sha256").unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.exists():
            return
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if rel.startswith(".tmp/") or p.name.endswith((".sha256", ".part")) or not p.is_file():
                continue
            if rel.startswith(prefix):
                yield rel

    @contextmanager
    def fetch_verified(self, ref: CheckpointRef) -> Iterator[str]:
        """The object itself, hashed in place: a local load verifies without copying."""
        sha, size = self.hash_file(ref.key)
        verify(ref, sha, size)
        yield str(self.path(ref.key))

    def scratch_dir(self) -> str:
        d = self.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return str(d)
