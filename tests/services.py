"""Starting and stopping the real services and processes the tests talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


