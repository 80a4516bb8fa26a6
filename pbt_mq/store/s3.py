"""A checkpoint store on any S3 API (MinIO, AWS, Ceph, moto): ``s3://bucket/prefix?endpoint=host:port``.

Pure S3 calls through ``store.s3client`` (the minio adapter). Credentials come only from the
environment (``PBT_S3_ACCESS_KEY``/``PBT_S3_SECRET_KEY``, else ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``), never from the URL, so they are never logged or stored in Redis.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from pbt_mq.core.protocol import CheckpointRef
from pbt_mq.core.settings import read as setting
from pbt_mq.store.base import (
    CHUNK,
    MissingObject,
    PipelinedHash,
    StoreError,
    StoreUnavailable,
    check_key,
    download_buffers,
    verify,
)
from pbt_mq.store.s3client import S3Client, S3Failure, valid_bucket


class S3Store:
    """One bucket and prefix; every failure is a StoreError naming the operation and the store."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        if "@" in u.netloc:
            raise StoreError("store URL: put no credentials in the URL; set PBT_S3_ACCESS_KEY and PBT_S3_SECRET_KEY")
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        unknown = sorted(set(q) - {"endpoint", "secure", "region"})
        if unknown:
            raise StoreError(
                f"store URL: unknown parameter(s) {', '.join(unknown)}; only endpoint, secure and region are"
                " understood (credentials come from PBT_S3_ACCESS_KEY/PBT_S3_SECRET_KEY, never the URL)"
            )
        if ":" in u.netloc:
            raise StoreError("store URL: the part after s3:// is the bucket; give the server as ?endpoint=host:port")
        self.bucket = u.netloc
        if not self.bucket:
            raise StoreError("store URL: needs a bucket, e.g. s3://checkpoints/pbt?endpoint=minio:9000")
        problem = valid_bucket(self.bucket)
        if problem:
            raise StoreError(f"store URL: bucket {self.bucket!r}: {problem}")
        self.prefix = u.path.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.endpoint = q.get("endpoint") or setting("PBT_S3_ENDPOINT") or "s3.amazonaws.com"
        secure = q["secure"].lower() not in ("0", "false", "no") if "secure" in q else setting("PBT_S3_SECURE")
        self.url = url
        access = setting("PBT_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = setting("PBT_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        try:
            self.client = S3Client(self.endpoint, self.bucket, access, secret, secure, q.get("region") or None)
        except ValueError as exc:  # a malformed endpoint, a secret key without an access key
            raise StoreError(f"store {url}: {exc}") from None

    def name(self, key: str) -> str:
        """The object name of a checkpoint key (under the URL's prefix)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, what: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except S3Failure as exc:
            if exc.missing and key:
                raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
            if exc.code == "":
                raise StoreUnavailable(f"{what}: cannot talk to the S3 endpoint {self.endpoint} ({exc})") from None
            kind = MissingObject if exc.missing else StoreUnavailable if exc.transient else StoreError
            raise kind(f"{what}: {exc} (store {self.url})") from None

    def check(self) -> None:
        try:
            self.client.ensure_bucket()
        except (S3Failure, ValueError) as exc:
            raise StoreError(
                f"store {self.url}: cannot reach or create bucket {self.bucket!r} at {self.endpoint}"
                f" ({exc}); check the endpoint and PBT_S3_ACCESS_KEY/PBT_S3_SECRET_KEY"
            ) from None

    def put_file(self, key: str, path: str, sha256: str, size: int) -> None:
        """Upload once: refused if the key exists, and atomically so (``If-None-Match: *``) on
        servers with conditional writes (AWS S3, MinIO), so two writers cannot both win."""
        name = self.name(key)
        actual = os.path.getsize(path)
        if actual != size:
            raise StoreError(f"checkpoint {key}: {path} holds {actual} bytes, not the recorded {size}")

        def put(headers: dict[str, str]) -> None:
            with open(path, "rb") as f:
                self.client.put_once(name, f, size, headers)

        self._put_once(key, name, sha256, size, put)

    def put_buffers(self, key: str, buffers: list[memoryview], sha256: str, size: int) -> None:
        """``put_file`` straight from memory: no scratch file, each part a view of the state's bytes."""
        name = self.name(key)
        if sum(b.nbytes for b in buffers) != size:
            raise StoreError(f"checkpoint {key}: the buffers hold {sum(b.nbytes for b in buffers)} bytes, not {size}")
        self._put_once(key, name, sha256, size, lambda h: self.client.put_once_buffers(name, buffers, size, h))

    def _put_once(self, key: str, name: str, sha256: str, size: int, put: Callable[[dict[str, str]], None]) -> None:
        exists = StoreError(f"checkpoint {key}: already exists in {self.url}; keys are write-once")
        if self.exists(key):
            if self._stored_sha256(name) == (sha256, size):
                return  # our earlier attempt landed and only its answer was lost (retrying() tried again)
            raise exists
        headers = {"Content-Type": "application/octet-stream", "x-amz-meta-sha256": sha256}
        try:
            with self._errors(f"checkpoint {key}: upload"):
                try:
                    put(headers)
                except S3Failure as exc:
                    if exc.code != "PreconditionFailed":
                        raise
                    # Someone wrote the key after our check, or urllib3 retried our own PUT whose
                    # answer was lost. Identical bytes are our write (or as good as); others are not.
                    if self._stored_sha256(name) != (sha256, size):
                        raise exists from None
        except MissingObject as exc:  # the bucket is gone: not a missing checkpoint
            raise StoreError(str(exc)) from None

    def fetch_bytes(self, ref: CheckpointRef) -> memoryview:
        """Downloaded into a new buffer, hashed on a helper thread as it arrives, then verified."""
        buf, h = download_buffers.take(ref.size), PipelinedHash()
        try:
            with self._errors(f"checkpoint {ref.key}: download", ref.key):
                size = self.client.read_into(self.name(ref.key), buf, h.feed)
        finally:
            h.wait()
        verify(ref, h.hexdigest() if size == ref.size else "(not read)", size)
        return buf

    def _stored_sha256(self, name: str) -> tuple[str, int] | None:
        try:
            return self.client.stat(name)
        except S3Failure:  # only asked to tell our own retried write apart
            return None

    def get_to(self, key: str, out: BinaryIO) -> tuple[str, int]:
        name = self.name(key)
        h, size = hashlib.sha256(), 0
        with self._errors(f"checkpoint {key}: download", key):
            for chunk in self.client.chunks(name, CHUNK):
                h.update(chunk)
                size += len(chunk)
                out.write(chunk)
        return h.hexdigest(), size

    def exists(self, key: str) -> bool:
        with self._errors(f"checkpoint {key}: stat"):
            return self.client.stat(self.name(key)) is not None

    def delete(self, key: str) -> None:
        with self._errors(f"checkpoint {key}: delete"):
            self.client.remove(self.name(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise StoreError(f"list prefix {prefix!r}: must be relative, without '..'")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(f"list {prefix!r}"):
            names = self.client.names(full)
        for n in names:
            yield n[cut:]

    @contextmanager
    def fetch_verified(self, ref: CheckpointRef) -> Iterator[str]:
        """Downloaded into a temporary file, verified, deleted afterwards."""
        fd, tmp = tempfile.mkstemp(prefix="pbt-ckpt-", suffix=".ckpt")
        try:
            with os.fdopen(fd, "wb") as f:
                sha, size = self.get_to(ref.key, f)
            verify(ref, sha, size)
            yield tmp
        finally:
            os.unlink(tmp)

    def scratch_dir(self) -> None:
        return None
