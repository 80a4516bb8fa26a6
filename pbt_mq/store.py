"""The checkpoint store: immutable objects checked by sha256, on S3 (MinIO) or a local directory.

``open_store(url)`` picks the backend:

* ``file:///abs/path`` (or a plain path): a directory, the single-machine default.
* ``s3://bucket/prefix?endpoint=host:9000&secure=false&region=us-east-1``: any S3 API
  through the ``minio`` client. Credentials come only from the environment
  (``PBT_S3_ACCESS_KEY``/``PBT_S3_SECRET_KEY``, else ``AWS_ACCESS_KEY_ID``/
  ``AWS_SECRET_ACCESS_KEY``), never from the URL, so they are never logged or stored in Redis.

Objects stream through files in both directions, so a checkpoint is never held
twice in memory; uploads over 64 MiB go multipart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from .protocol import SHA256_RE, CheckpointRef

CHUNK = 1 << 20
PART_SIZE = 64 << 20


class StoreError(RuntimeError):
    """The store failed or was misconfigured; the text says what to do."""


class MissingObject(StoreError):
    pass


class ChecksumError(StoreError):
    pass


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


class HashingWriter:
    """A write-only file wrapper that hashes as it writes (one pass, no second read)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    @property
    def sha256(self) -> str:
        return self.h.hexdigest()


def open_store(url: str) -> Store:
    if url.startswith("s3://"):
        return S3Store(url)
    if url.startswith("file://"):
        return LocalStore(urllib.parse.urlparse(url).path)
    if "://" in url:
        raise StoreError(f"store URL {url!r}: scheme must be file:// or s3://")
    return LocalStore(url)


@contextmanager
def fetch_verified(store: Store, ref: CheckpointRef, tmp_dir: str | None = None) -> Iterator[str]:
    """Yield a local path holding ``ref``'s bytes, verified against its sha256 and size."""
    if isinstance(store, LocalStore):
        path = store.path(ref.key)
        sha, size = store.hash_file(ref.key)
        _verify(ref, sha, size)
        yield str(path)
        return
    fd, tmp = tempfile.mkstemp(prefix="pbt-ckpt-", suffix=".pt", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            sha, size = store.get_to(ref.key, f)
        _verify(ref, sha, size)
        yield tmp
    finally:
        os.unlink(tmp)


def _verify(ref: CheckpointRef, sha: str, size: int) -> None:
    if sha != ref.sha256 or size != ref.size:
        raise ChecksumError(
            f"checkpoint {ref.key}: sha256 {sha[:12]}… / {size} bytes does not match the recorded"
            f" {ref.sha256[:12]}… / {ref.size} bytes; the object is corrupt or was replaced, refusing to load it"
        )


# ---------------------------------------------------------------- local directory


class LocalStore:
    def __init__(self, root: str):
        if not root:
            raise StoreError("file:// store needs a directory path, e.g. file:///var/pbt/checkpoints")
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        _check_key(key)
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
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{os.getpid()}.part"
        try:
            try:
                os.link(path, tmp)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(path, tmp)
            (dest.parent / f"{dest.name}.sha256").write_text(f"{sha256} {size}\n")
            os.link(tmp, dest)  # fails if dest exists: write-once
        except FileExistsError:
            raise StoreError(f"checkpoint {key}: already exists; keys are write-once") from None
        finally:
            tmp.unlink(missing_ok=True)

    def get_to(self, key: str, out: BinaryIO) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        try:
            with open(self.path(key), "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
        return h.hexdigest(), size

    def hash_file(self, key: str) -> tuple[str, int]:
        h, size = hashlib.sha256(), 0
        try:
            with open(self.path(key), "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
        return h.hexdigest(), size

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
            if p.is_file() and not rel.startswith(".tmp") and not p.name.endswith((".sha256", ".part")):
                if rel.startswith(prefix):
                    yield rel


# ---------------------------------------------------------------- S3 / MinIO


class S3Store:
    def __init__(self, url: str):
        from minio import Minio

        u = urllib.parse.urlparse(url)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.username or u.password:
            raise StoreError(
                "store URL: put no credentials in the URL; set PBT_S3_ACCESS_KEY and PBT_S3_SECRET_KEY"
            )
        self.bucket = u.hostname or ""
        if not self.bucket:
            raise StoreError(f"store URL {url!r}: needs a bucket, e.g. s3://checkpoints/pbt?endpoint=minio:9000")
        self.prefix = u.path.strip("/")
        self.endpoint = q.get("endpoint") or os.environ.get("PBT_S3_ENDPOINT") or "s3.amazonaws.com"
        secure = q.get("secure", os.environ.get("PBT_S3_SECURE", "true")).lower() not in ("0", "false", "no")
        self.url = url
        access = os.environ.get("PBT_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("PBT_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        self.client = Minio(
            self.endpoint, access_key=access, secret_key=secret, secure=secure, region=q.get("region")
        )

    def _name(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
        except Exception as exc:  # minio raises S3Error, urllib3 errors, ValueError
            raise StoreError(
                f"store {self.url}: cannot reach or create bucket {self.bucket!r} at {self.endpoint}"
                f" ({type(exc).__name__}: {exc}); check the endpoint and PBT_S3_ACCESS_KEY/PBT_S3_SECRET_KEY"
            ) from None

    def put_file(self, key: str, path: str, sha256: str, size: int) -> None:
        self.client.fput_object(
            self.bucket, self._name(key), path, metadata={"sha256": sha256}, part_size=PART_SIZE
        )

    def get_to(self, key: str, out: BinaryIO) -> tuple[str, int]:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, self._name(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
            raise StoreError(f"checkpoint {key}: {exc.code}: {exc.message}") from None
        h, size = hashlib.sha256(), 0
        try:
            for chunk in resp.stream(CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        finally:
            resp.close()
            resp.release_conn()
        return h.hexdigest(), size

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._name(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, self._name(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        full = self._name(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        for obj in self.client.list_objects(self.bucket, prefix=full, recursive=True):
            yield obj.object_name[cut:]


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StoreError(f"checkpoint key {key!r}: must be a relative path without '.', '..' or '//'")


def is_sha256(s: str) -> bool:
    return bool(SHA256_RE.match(s))
