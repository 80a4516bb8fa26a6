"""What pbt-mq relies on in minio (store/s3client.py, its only user), against the installed minio
and a real S3 server over HTTP."""

from __future__ import annotations

import io
import os
import secrets

import minio
import pytest
from contracts import declared, in_range

from pbt_mq.store import s3client
from pbt_mq.store.s3client import S3Client, S3Failure


def test_the_installed_minio_is_in_the_declared_range():
    assert in_range("minio", minio.__version__), (minio.__version__, str(declared("minio")))


def test_the_private_methods_we_call_are_there():
    for name in ("_put_object", "_create_multipart_upload", "_upload_part", "_execute", "_abort_multipart_upload",
                 "_list_multipart_uploads"):
        assert callable(getattr(minio.Minio, name)), name


@pytest.fixture
def client(s3_endpoint) -> S3Client:
    c = S3Client(s3_endpoint, f"contract-{secrets.token_hex(4)}", os.environ["PBT_S3_ACCESS_KEY"],
                 os.environ["PBT_S3_SECRET_KEY"], False, "us-east-1")
    c.ensure_bucket()
    return c


@pytest.mark.parametrize("size", [100, 11 << 20], ids=["single", "multipart"])
def test_a_write_is_once_and_says_so(client, monkeypatch, size):
    monkeypatch.setattr(s3client, "PART_SIZE", 5 << 20)  # 11 MiB: three parts
    data = os.urandom(size)
    client.put_once("k/obj", io.BytesIO(data), size, {"x-amz-meta-sha256": "abc"})
    with pytest.raises(S3Failure) as exc:
        client.put_once("k/obj", io.BytesIO(os.urandom(size)), size, {"x-amz-meta-sha256": "def"})
    assert exc.value.code == "PreconditionFailed" and not exc.value.missing
    assert client.stat("k/obj") == ("abc", size)  # the first write stands, with its metadata
    assert b"".join(client.chunks("k/obj", 1 << 20)) == data
    assert list(client.minio._list_multipart_uploads(client.bucket).uploads) == []  # noqa: SLF001


@pytest.mark.parametrize("size", [100, 11 << 20], ids=["single", "multipart"])
def test_buffers_go_up_as_views_and_come_down_into_a_buffer(client, monkeypatch, size):
    """put_once_buffers (parts are views of the buffers, or joins across them) and read_into (the
    response's http.client ``_fp.readinto``, straight into our buffer), byte for byte."""
    monkeypatch.setattr(s3client, "PART_SIZE", 5 << 20)
    data = os.urandom(size)
    cut = [0, 7, size // 3, size // 3 + 1, size]  # parts that span buffers, and a 1-byte buffer
    bufs = [memoryview(data)[a:b] for a, b in zip(cut, cut[1:], strict=False)]
    client.put_once_buffers("b/obj", bufs, size, {"x-amz-meta-sha256": "abc"})
    out = memoryview(bytearray(size))
    seen: list[int] = []
    assert client.read_into("b/obj", out, lambda piece: seen.append(piece.nbytes)) == size
    assert bytes(out) == data and sum(seen) == size
    assert client.read_into("b/obj", memoryview(bytearray(size - 1)), seen.append) == size  # wrong size: unread
    resp = client.minio.get_object(client.bucket, "b/obj")
    try:
        assert callable(resp._fp.readinto)  # noqa: SLF001 - the internal read_into relies on
    finally:
        resp.close()
        resp.release_conn()


def test_reads_of_what_is_missing(client):
    assert client.stat("nope") is None
    with pytest.raises(S3Failure) as exc:
        b"".join(client.chunks("nope", 1024))
    assert exc.value.missing
    client.put_once("a/1", io.BytesIO(b"x"), 1, {})
    client.put_once("a/2", io.BytesIO(b"y"), 1, {})
    assert sorted(client.names("a/")) == ["a/1", "a/2"]
    client.remove("a/1")
    assert client.names("a/") == ["a/2"]


def test_an_unreachable_endpoint_is_a_transient_failure():
    c = S3Client("127.0.0.1:1", "bucket-x", "k", "s", False, "us-east-1")
    with pytest.raises(S3Failure) as exc:
        c.stat("x")
    assert exc.value.code == "" and exc.value.transient
