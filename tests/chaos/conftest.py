"""Chaos fixtures: a restartable redis-server (AOF on), an S3 store behind a cuttable proxy,
and the report table printed at the end of the run (and written to $PBT_CHAOS_REPORT)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from proxy import Proxy
from report import RESULTS
from services import Fleet, free_port, redis_binary, stop_proc, unavailable, wait_port


class ChaosRedis:
    """A private redis-server with AOF on, that can be restarted on the same port."""

    def __init__(self, workdir: Path):
        self.binary = redis_binary()
        if not self.binary:
            unavailable("no redis-server for the chaos suite")
        self.dir, self.port = workdir, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_port(self.port, self.proc):
            unavailable("chaos redis-server did not start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the AOF to load
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.BusyLoadingError:
                time.sleep(0.05)

    def stop(self) -> None:
        try:
            redis.Redis(port=self.port).shutdown(nosave=False)
        except redis.ConnectionError:
            pass
        assert self.proc is not None
        self.proc.wait(timeout=20)

    def close(self) -> None:
        if self.proc is not None:
            stop_proc(self.proc)


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Iterator[ChaosRedis]:
    srv = ChaosRedis(tmp_path)
    yield srv
    srv.close()


@pytest.fixture
def s3_proxy(s3_endpoint: str) -> Iterator[Proxy]:
    host, port = s3_endpoint.rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    yield proxy
    proxy.close()


@pytest.fixture
def chaos_fleet(chaos_redis: ChaosRedis, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    f = Fleet(chaos_redis.url, tmp_path / "logs")
    yield f
    f.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f.all_logs())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not RESULTS:
        return
    table = report_table(RESULTS)
    terminalreporter.write_sep("=", "chaos report")
    terminalreporter.write_line(table)
    out = os.environ.get("PBT_CHAOS_REPORT")
    if out:
        Path(out).write_text(table + "\n")


def report_table(results: list[dict]) -> str:
    faults: dict[str, list[dict]] = {}
    for res in results:
        faults.setdefault(res["fault"], []).append(res)
    lines = [
        "| fault | injected | runs completed | members lost | duplicate segments | re-run segments | recovery median (s) | recovery max (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fault, rs in faults.items():
        rec = sorted(x["recovery_s"] for x in rs if x["recovery_s"] is not None)
        median = f"{rec[len(rec) // 2]:.2f}" if rec else "-"
        worst = f"{rec[-1]:.2f}" if rec else "-"
        lines.append(
            f"| {fault} | {sum(x['injected'] for x in rs)} | {sum(x['completed'] for x in rs)}/{len(rs)}"
            f" | {sum(x['lost'] for x in rs)} | {sum(x['duplicates'] for x in rs)} | {sum(x['reruns'] for x in rs)}"
            f" | {median} | {worst} |"
        )
    return "\n".join(lines)
