"""Redis ACL users and TLS end to end, credentials never in logs, bad CLI input exits 2."""

from __future__ import annotations

import subprocess
import time

import pytest
from helpers import TOY, pbt
from services import Fleet, free_port, redis_binary, stop_proc, unavailable, wait_port

PASSWORD = "s3cret-Pa55word-not-in-logs"


@pytest.fixture
def tls_acl_redis(tmp_path):
    """redis-server speaking TLS only, with an ACL user `pbt` (the default user disabled)."""
    binary = redis_binary()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
    )
    if made.returncode != 0 or not binary:
        unavailable("openssl or redis-server missing for the TLS test")
    port = free_port()
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default off\nuser pbt on >{PASSWORD} ~* &* +@all\n")
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--aclfile", str(acl), "--save", "",
         "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    if not wait_port(port, proc, timeout_s=10):
        out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
        stop_proc(proc)
        unavailable(f"redis-server without TLS support ({binary}): {out[-200:]}")
    yield f"rediss://pbt:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    stop_proc(proc)


def test_a_run_over_tls_with_an_acl_user(tls_acl_redis, tmp_path):
    fleet = Fleet(tls_acl_redis, tmp_path / "logs")
    try:
        fleet.start("arbiter", "a1")
        fleet.start("worker", "w1")
        res = pbt("launch", TOY, "--redis", tls_acl_redis, "--store", f"file://{tmp_path}/ckpt",
                  "--set", "stop.steps=12")
        assert res.returncode == 0, res.stderr
        exp = res.stdout.strip().splitlines()[-1]
        res = pbt("wait", exp, "--timeout", "60", "--redis", tls_acl_redis, timeout=90)
        assert res.returncode == 0, res.stderr + fleet.all_logs()
    finally:
        fleet.stop()
    assert PASSWORD not in fleet.all_logs()


def test_wrong_password_is_one_clear_line(tls_acl_redis):
    bad = tls_acl_redis.replace(PASSWORD, "Bad-Pass-9417")
    res = pbt("status", "nope", "--redis", bad)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "authentication failed" in lines[0] and "Bad-Pass-9417" not in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_unreachable_redis_is_one_clear_line():
    start = time.monotonic()
    res = pbt("status", "x", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert res.returncode == 1
    assert "cannot reach Redis" in res.stderr and "PBT_REDIS_URL" in res.stderr
    assert "Traceback" not in res.stderr
    assert time.monotonic() - start < 60  # not a benchmark: only that it gives up


def timed(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = pbt(*args)
    return res, time.monotonic() - start


def test_a_missing_password_is_one_line_naming_the_setting_in_seconds(tmp_path):
    """Issue 24: without a password the client retried its HELLO for 91 s; it is refused at once now."""
    binary = redis_binary()
    if not binary:
        unavailable("redis-server missing")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                             "--save", "", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port(port, proc, timeout_s=10)
        res, took = timed("list", "--redis", f"redis://127.0.0.1:{port}/0")
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and took < 10, (took, res.stderr)
        assert len(lines) == 1 and "requires a password" in lines[0] and "PBT_REDIS_URL" in lines[0], res.stderr
        res, took = timed("list", "--redis", f"rediss://127.0.0.1:{port}/0")  # TLS against a plain server
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and took < 10, (took, res.stderr)
        assert len(lines) == 1 and "use redis:// instead of rediss://" in lines[0], res.stderr
    finally:
        stop_proc(proc)


def test_plain_against_a_tls_server_is_one_line_in_seconds(tls_acl_redis):
    plain = tls_acl_redis.replace("rediss://", "redis://").split("?")[0]
    res, took = timed("list", "--redis", plain)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and took < 10, (took, res.stderr)
    assert len(lines) == 1 and "use rediss://" in lines[0] and PASSWORD not in lines[0], res.stderr
