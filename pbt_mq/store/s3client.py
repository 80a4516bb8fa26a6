"""The minio adapter: every call into the ``minio`` package is in this module.

The public API serves reads, stats, deletes and listing. Write-once uploads need the
``If-None-Match: *`` header on the request that creates the object, which minio's public
``put_object`` cannot send on a multipart upload's completion, so five private methods are used,
here only: ``_put_object``, ``_create_multipart_upload``, ``_upload_part``, ``_execute`` and
``_abort_multipart_upload``; a download lands in our buffer through the response's ``_fp``
(http.client's ``readinto``: urllib3's own ``readinto`` reads into a temporary and copies).
``tests/store/test_s3_contract.py`` checks them against the installed minio and a real S3 server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO
from xml.etree import ElementTree as ET

import certifi
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

from pbt_mq.core.settings import read as setting
from pbt_mq.store.base import PART_SIZE, READ_CHUNK

MAX_PARTS = 10_000
UPLOAD_THREADS = 2
ONCE = {"If-None-Match": "*"}  # conditional write: 412 PreconditionFailed if the key exists
MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound")
TRANSIENT_CODES = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized")


class S3Failure(Exception):
    """A failed S3 call: ``code`` is the S3 error code, or "" when the server could not be reached."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def missing(self) -> bool:
        return self.code in MISSING_CODES

    @property
    def transient(self) -> bool:
        return self.code == "" or self.code in TRANSIENT_CODES


def _part_size(size: int) -> int:
    return max(PART_SIZE, -(-size // MAX_PARTS))


def _slices(buffers: list[memoryview], part_size: int) -> Iterator[Any]:
    """The concatenation of ``buffers`` in parts of ``part_size`` (the last shorter): a view of one
    buffer when the part lies inside it, else the pieces joined."""
    pending: list[memoryview] = []
    have = 0
    for b in buffers:
        off = 0
        while off < b.nbytes:
            take = min(part_size - have, b.nbytes - off)
            pending.append(b[off:off + take])
            have += take
            off += take
            if have == part_size:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, have = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def valid_bucket(name: str) -> str | None:
    """What is wrong with a bucket name, or None."""
    try:
        check_bucket_name(name, strict=True)
    except ValueError as exc:
        return str(exc)
    return None


def _http_client() -> urllib3.PoolManager:
    """minio's default waits 5 minutes to connect and retries 5 times; an unreachable store should
    say so in seconds (PBT_S3_CONNECT_TIMEOUT, PBT_S3_READ_TIMEOUT, PBT_S3_RETRIES)."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=setting("PBT_S3_CONNECT_TIMEOUT"), read=setting("PBT_S3_READ_TIMEOUT")),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=setting("PBT_S3_RETRIES"), backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


@contextmanager
def _failures() -> Iterator[None]:
    try:
        yield
    except S3Error as exc:
        raise S3Failure(exc.code or "Error", f"{exc.code}: {exc.message}") from None
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise S3Failure("", f"{type(exc).__name__}: {exc}") from None


class S3Client:
    """One bucket on one endpoint; every method raises ``S3Failure`` on failure."""

    def __init__(self, endpoint: str, bucket: str, access: str | None, secret: str | None, secure: bool,
                 region: str | None) -> None:
        self.bucket = bucket
        self.minio = Minio(endpoint, access_key=access, secret_key=secret, secure=secure, region=region,
                           http_client=_http_client())

    def ensure_bucket(self) -> None:
        with _failures():
            if not self.minio.bucket_exists(self.bucket):
                self.minio.make_bucket(self.bucket)

    def put_once(self, name: str, f: BinaryIO, size: int, headers: dict[str, str]) -> None:
        """Upload ``size`` bytes from ``f`` unless ``name`` exists (S3Failure "PreconditionFailed")."""
        with _failures():
            if size <= PART_SIZE:
                self.minio._put_object(self.bucket, name, f.read(), {**headers, **ONCE})
            else:
                part_size = _part_size(size)
                self._multipart_once(name, iter(lambda: f.read(part_size), b""), headers)

    def put_once_buffers(self, name: str, buffers: list[memoryview], size: int, headers: dict[str, str]) -> None:
        """``put_once`` of the buffers' concatenation, each part a view of them where it can be (no copy)."""
        with _failures():
            if size <= PART_SIZE:
                body = buffers[0] if len(buffers) == 1 else b"".join(buffers)
                self.minio._put_object(self.bucket, name, body, {**headers, **ONCE})
            else:
                self._multipart_once(name, _slices(buffers, _part_size(size)), headers)

    def _multipart_once(self, name: str, parts: Iterator[Any], headers: dict[str, str]) -> None:
        """Parts taken one at a time and sent by UPLOAD_THREADS threads: at most UPLOAD_THREADS + 1
        parts are ever in memory, whatever the object's size; the completion is conditional."""
        upload_id = self.minio._create_multipart_upload(self.bucket, name, dict(headers))
        done = False
        try:
            etags: dict[int, str] = {}
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="pbt-upload") as pool:
                pending: list = []
                number = 0
                for chunk in parts:
                    number += 1
                    pending.append((number, pool.submit(self.minio._upload_part, self.bucket, name, chunk, None,
                                                        upload_id, number)))
                    del chunk
                    while len(pending) >= UPLOAD_THREADS:
                        n, fut = pending.pop(0)
                        etags[n] = fut.result()
                for n, fut in pending:
                    etags[n] = fut.result()
            self._complete_once(name, upload_id, etags)
            done = True
        finally:
            if not done:
                try:
                    self.minio._abort_multipart_upload(self.bucket, name, upload_id)
                except Exception:  # noqa: BLE001 - best effort; the server expires it anyway
                    pass

    def _complete_once(self, name: str, upload_id: str, etags: dict[int, str]) -> None:
        root = ET.Element("CompleteMultipartUpload")
        for n in sorted(etags):
            part = ET.SubElement(root, "Part")
            ET.SubElement(part, "PartNumber").text = str(n)
            ET.SubElement(part, "ETag").text = f'"{etags[n]}"'
        body = ET.tostring(root)
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        resp = self.minio._execute("POST", self.bucket, name, body=body, query_params={"uploadId": upload_id},
                                   headers={"Content-Type": "application/xml", "Content-MD5": md5, **ONCE})
        # S3 may answer 200 and put the failure in the body of a CompleteMultipartUpload.
        if resp.data and ET.fromstring(resp.data).tag.rsplit("}", 1)[-1] == "Error":
            err = ET.fromstring(resp.data)
            code = err.findtext("Code") or "InternalError"
            raise S3Failure(code, f"complete multipart upload: {code}: {err.findtext('Message')}")

    def stat(self, name: str) -> tuple[str, int] | None:
        """(x-amz-meta-sha256, size) of ``name``, or None if it does not exist."""
        try:
            with _failures():
                st = self.minio.stat_object(self.bucket, name)
        except S3Failure as exc:
            if exc.missing:
                return None
            raise
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        return meta.get("x-amz-meta-sha256", ""), st.size or 0

    def chunks(self, name: str, chunk: int) -> Iterator[bytes]:
        with _failures():
            resp = self.minio.get_object(self.bucket, name)
            try:
                yield from resp.stream(chunk)
            finally:
                resp.close()
                resp.release_conn()

    def read_into(self, name: str, buf: memoryview, feed: Callable[[memoryview], None]) -> int:
        """GET ``name`` straight into ``buf`` (http.client's ``readinto``: urllib3's own copies every
        chunk), calling ``feed`` on each piece as it lands; returns the object's size (read or, when
        it is not ``len(buf)``, as the server reports it, unread)."""
        with _failures():
            resp = self.minio.get_object(self.bucket, name)
            try:
                length = resp.headers.get("Content-Length")
                if length is not None and int(length) != len(buf):
                    return int(length)
                fp, off = resp._fp, 0
                while off < len(buf):
                    n = fp.readinto(buf[off:off + READ_CHUNK])
                    if not n:
                        return off
                    feed(buf[off:off + n])
                    off += n
                return off + len(resp._fp.read(1))  # a body longer than announced: not ours
            finally:
                resp.close()
                resp.release_conn()

    def remove(self, name: str) -> None:
        with _failures():
            self.minio.remove_object(self.bucket, name)

    def names(self, prefix: str) -> list[str]:
        with _failures():
            return [o.object_name for o in self.minio.list_objects(self.bucket, prefix=prefix, recursive=True)
                    if o.object_name]

    def raw_put(self, name: str, data: bytes) -> None:
        """minio's own upload, for ``pbt bench``'s peer figure (same part size as ours)."""
        with _failures():
            self.minio.put_object(self.bucket, name, io.BytesIO(data), len(data), part_size=PART_SIZE)
