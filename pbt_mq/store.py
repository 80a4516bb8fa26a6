"""The checkpoint store: immutable objects checked by sha256, on S3 (MinIO) or a local directory.

``open_store(url)`` picks the backend:

* ``file:///abs/path`` (or a plain path): a directory, the single-machine default.
* ``s3://bucket/prefix?endpoint=host:9000&secure=false&region=us-east-1``: any S3 API
  through the ``minio`` client. Credentials come only from the environment
  (``PBT_S3_ACCESS_KEY``/``PBT_S3_SECRET_KEY``, else ``AWS_ACCESS_KEY_ID``/
  ``AWS_SECRET_ACCESS_KEY``), never from the URL, so they are never logged or stored in Redis.

Objects stream through files in both directions, so a checkpoint is never held
twice in memory; uploads over PART_SIZE go multipart, with at most UPLOAD_THREADS + 1
parts in memory at once.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from .protocol import SHA256_RE, CheckpointRef

log = logging.getLogger("pbt_mq.store")
TRANSIENT_S3_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized")
T = TypeVar("T")

CHUNK = 1 << 20
PART_SIZE = 32 << 20  # S3 multipart part size (the minimum is 5 MiB, the most parts 10,000)
MAX_PARTS = 10_000
UPLOAD_THREADS = 2
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
    budget = float(os.environ.get("PBT_STORE_RETRY_S", "120")) if budget_s is None else budget_s
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


def _hash_pool():  # -> concurrent.futures.ThreadPoolExecutor
    global _pool
    with _pool_lock:
        if _pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(2, thread_name_prefix="pbt-hash")
        return _pool


def _after_fork_in_child() -> None:
    # A forked child (an RQ work horse) inherits the pool object but not its threads.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def open_store(url: str) -> Store:
    if url.startswith("s3://"):
        return S3Store(url)
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


# ---------------------------------------------------------------- S3 / MinIO


class S3Store:
    """Any S3 API (MinIO, AWS, Ceph, moto) through the ``minio`` client, pure S3 calls only."""

    def __init__(self, url: str):
        from minio import Minio
        from minio.helpers import check_bucket_name

        u = urllib.parse.urlsplit(url)
        if "@" in u.netloc:
            raise StoreError(
                "store URL: put no credentials in the URL; set PBT_S3_ACCESS_KEY and PBT_S3_SECRET_KEY"
            )
        q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        unknown = sorted(set(q) - {"endpoint", "secure", "region"})
        if unknown:
            raise StoreError(
                f"store URL: unknown parameter(s) {', '.join(unknown)}; only endpoint, secure and region are"
                " understood (credentials come from PBT_S3_ACCESS_KEY/PBT_S3_SECRET_KEY, never the URL)"
            )
        if ":" in u.netloc:
            raise StoreError(
                "store URL: the part after s3:// is the bucket; give the server as ?endpoint=host:port"
            )
        self.bucket = u.netloc
        if not self.bucket:
            raise StoreError("store URL: needs a bucket, e.g. s3://checkpoints/pbt?endpoint=minio:9000")
        try:
            check_bucket_name(self.bucket, strict=True)
        except ValueError as exc:
            raise StoreError(f"store URL: bucket {self.bucket!r}: {exc}") from None
        self.prefix = u.path.strip("/")
        if self.prefix:
            _check_key(self.prefix)
        self.endpoint = q.get("endpoint") or os.environ.get("PBT_S3_ENDPOINT") or "s3.amazonaws.com"
        secure = q.get("secure", os.environ.get("PBT_S3_SECURE", "true")).lower() not in ("0", "false", "no")
        self.url = url
        access = os.environ.get("PBT_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = os.environ.get("PBT_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
        try:
            self.client = Minio(
                self.endpoint,
                access_key=access,
                secret_key=secret,
                secure=secure,
                region=q.get("region") or None,
                http_client=_http_client(),
            )
        except ValueError as exc:  # a malformed endpoint, a secret key without an access key
            raise StoreError(f"store {url}: {exc}") from None

    def _name(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn minio/urllib3 failures into a StoreError that names the operation and the store."""
        import urllib3
        from minio.error import MinioException, S3Error

        try:
            yield
        except S3Error as exc:
            kind = StoreUnavailable if exc.code in TRANSIENT_S3_CODES else StoreError
            raise kind(f"{what}: {exc.code}: {exc.message} (store {self.url})") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"{what}: cannot talk to the S3 endpoint {self.endpoint} ({type(exc).__name__}: {exc})"
            ) from None

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
        """Upload once: refused if the key exists, and atomically so (``If-None-Match: *``) on
        servers with conditional writes (AWS S3, MinIO), so two writers cannot both win."""
        from minio.error import S3Error

        name = self._name(key)
        actual = os.path.getsize(path)
        if actual != size:
            raise StoreError(f"checkpoint {key}: {path} holds {actual} bytes, not the recorded {size}")
        exists = StoreError(f"checkpoint {key}: already exists in {self.url}; keys are write-once")
        if self.exists(key):
            if self._stored_sha256(name) == (sha256, size):
                return  # our earlier attempt landed and only its answer was lost (retrying() tried again)
            raise exists
        headers = {"Content-Type": "application/octet-stream", "x-amz-meta-sha256": sha256}
        with open(path, "rb") as f, self._errors(f"checkpoint {key}: upload"):
            try:
                if size <= PART_SIZE:
                    self.client._put_object(self.bucket, name, f.read(), {**headers, **_ONCE})
                else:
                    self._put_multipart(name, f, size, headers)
            except S3Error as exc:
                if exc.code != "PreconditionFailed":
                    raise
                # Someone wrote the key after our check, or urllib3 retried our own PUT whose
                # answer was lost. Identical bytes are our write (or as good as); others are not.
                if self._stored_sha256(name) == (sha256, size):
                    return
                raise exists from None

    def _stored_sha256(self, name: str) -> tuple[str, int] | None:
        try:
            st = self.client.stat_object(self.bucket, name)
        except Exception:  # noqa: BLE001 - only asked to tell our own retried write apart
            return None
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        return meta.get("x-amz-meta-sha256", ""), st.size or 0

    def _put_multipart(self, name: str, f: BinaryIO, size: int, headers: dict[str, str]) -> None:
        """Parts read one at a time and sent by UPLOAD_THREADS threads: at most
        UPLOAD_THREADS + 1 parts are ever in memory, whatever the object's size."""
        from concurrent.futures import ThreadPoolExecutor
        from xml.etree import ElementTree as ET

        part_size = max(PART_SIZE, -(-size // MAX_PARTS))
        upload_id = self.client._create_multipart_upload(self.bucket, name, dict(headers))
        done = False
        try:
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="pbt-upload") as pool:
                pending: list = []
                etags: dict[int, str] = {}
                number = 0
                while chunk := f.read(part_size):
                    number += 1
                    pending.append(
                        (number, pool.submit(self.client._upload_part, self.bucket, name, chunk, None, upload_id, number))
                    )
                    del chunk
                    while len(pending) >= UPLOAD_THREADS:
                        n, fut = pending.pop(0)
                        etags[n] = fut.result()
                for n, fut in pending:
                    etags[n] = fut.result()
            root = ET.Element("CompleteMultipartUpload")
            for n in sorted(etags):
                part = ET.SubElement(root, "Part")
                ET.SubElement(part, "PartNumber").text = str(n)
                ET.SubElement(part, "ETag").text = f'"{etags[n]}"'
            body = ET.tostring(root)
            resp = self.client._execute(
                "POST",
                self.bucket,
                name,
                body=body,
                headers={
                    "Content-Type": "application/xml",
                    "Content-MD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                    **_ONCE,
                },
                query_params={"uploadId": upload_id},
            )
            # S3 may answer 200 and put the failure in the body of a CompleteMultipartUpload.
            if resp.data and ET.fromstring(resp.data).tag.rsplit("}", 1)[-1] == "Error":
                err = ET.fromstring(resp.data)
                code = err.findtext("Code") or "InternalError"
                raise StoreError(f"complete multipart upload: {code}: {err.findtext('Message')}")
            done = True
        finally:
            if not done:
                try:
                    self.client._abort_multipart_upload(self.bucket, name, upload_id)
                except Exception:  # noqa: BLE001 - best effort; the server expires it anyway
                    pass

    def get_to(self, key: str, out: BinaryIO) -> tuple[str, int]:
        from minio.error import S3Error

        name = self._name(key)
        with self._errors(f"checkpoint {key}: download"):
            try:
                resp = self.client.get_object(self.bucket, name)
            except S3Error as exc:
                if exc.code in _MISSING:
                    raise MissingObject(f"checkpoint {key}: not found in {self.url}") from None
                raise
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

        name = self._name(key)
        with self._errors(f"checkpoint {key}: stat"):
            try:
                self.client.stat_object(self.bucket, name)
                return True
            except S3Error as exc:
                if exc.code in _MISSING:
                    return False
                raise

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._errors(f"checkpoint {key}: delete"):
            self.client.remove_object(self.bucket, name)

    def list(self, prefix: str = "") -> Iterator[str]:
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise StoreError(f"list prefix {prefix!r}: must be relative, without '..'")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        cut = len(self.prefix) + 1 if self.prefix else 0
        with self._errors(f"list {prefix!r}"):
            names = [obj.object_name for obj in self.client.list_objects(self.bucket, prefix=full, recursive=True)]
        for n in names:
            if n:
                yield n[cut:]


_ONCE = {"If-None-Match": "*"}  # conditional write: fail with 412 PreconditionFailed if the key exists
_MISSING = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound")


def _http_client():  # -> urllib3.PoolManager
    """minio's default waits 5 minutes to connect and retries 5 times; an unreachable store should
    say so in seconds. Connect timeout, read timeout (per socket read, not per object) and retries
    come from PBT_S3_CONNECT_TIMEOUT / PBT_S3_READ_TIMEOUT / PBT_S3_RETRIES."""
    import certifi
    import urllib3

    def num(name: str, default: float) -> float:
        try:
            return float(os.environ.get(name, default))
        except ValueError:
            raise StoreError(f"{name}={os.environ[name]!r}: must be a number") from None

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=num("PBT_S3_CONNECT_TIMEOUT", 5), read=num("PBT_S3_READ_TIMEOUT", 120)),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=int(num("PBT_S3_RETRIES", 3)), backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StoreError(f"checkpoint key {key!r}: must be a relative path without '.', '..' or '//'")
    if parts[0] == ".tmp" or key.endswith((".sha256", ".part")):
        raise StoreError(f"checkpoint key {key!r}: '.tmp/', '*.sha256' and '*.part' are the store's own names")


def is_sha256(s: str) -> bool:
    return bool(SHA256_RE.match(s))
