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
    from pbt_mq.tools.redis_server import redis_server_binary

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
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PBT_LOG_LEVEL": "INFO",
               # the tests read events back after the fact: keep them unless a test says otherwise
               "PBT_EVENTS_RETENTION_S": os.environ.get("PBT_EVENTS_RETENTION_S", "-1")}
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




class Dashboard:
    """A real ``pbt dashboard`` process on a free loopback port (``--port 0``); its URL is read from
    the line it prints once it listens."""

    def __init__(self, logs: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0):
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"dashboard-{time.monotonic_ns()}.log"
        self.log_file = open(self.log_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pbt_mq", "dashboard", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.log_file, cwd=ROOT, env=full_env,
        )
        self.url = self._read_url(timeout_s)

    def _read_url(self, timeout_s: float) -> str:
        import re
        import select

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        poller = select.poll()  # not select(): a long test session has descriptors past 1024
        poller.register(self.proc.stdout, select.POLLIN)
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            if poller.poll(200):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        found = re.search(rb"(http://[^/\s]+/)", line)
        if not found:
            self.stop()
            raise RuntimeError(f"pbt dashboard did not start: {line!r} {self.log()}")
        return found.group(1).decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_proc(self.proc)
        self.log_file.close()


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too, so below 55536."""
    import random

    rng, ports = random.Random(), []
    while len(ports) < n:
        p = rng.randrange(20000, 55000)
        if p in ports:
            continue
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        ports.append(p)
    return ports


class RedisClusterNodes:
    """A real Redis Cluster of ``n`` masters on loopback, slots split evenly, built with CLUSTER
    ADDSLOTSRANGE/MEET (no redis-cli needed)."""

    SLOTS = 16384

    def __init__(self, binary: str, workdir: Path, n: int = 3):
        self.ports = _cluster_ports(n)
        self.procs: list[subprocess.Popen] = []
        for port in self.ports:
            d = workdir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--dir", str(d), "--save", "",
                 "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port, proc in zip(self.ports, self.procs, strict=True):
            if not wait_port(port, proc):
                self.stop()
                raise RuntimeError(f"{binary} --cluster-enabled did not start on port {port}")
        self._form()

    def owner(self, slot: int) -> int:
        """Index of the node that owns ``slot``."""
        return min(slot * len(self.ports) // self.SLOTS, len(self.ports) - 1)

    def _ranges(self) -> list[tuple[int, int]]:
        n = len(self.ports)
        bounds = [(i * self.SLOTS + n - 1) // n for i in range(n + 1)]
        return [(lo, hi - 1) for lo, hi in zip(bounds, bounds[1:], strict=False)]

    def _form(self, timeout_s: float = 30.0) -> None:
        import redis

        nodes = [redis.Redis(port=p) for p in self.ports]
        for node, (lo, hi) in zip(nodes, self._ranges(), strict=True):
            node.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))
        for p in self.ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            infos = [n.execute_command("CLUSTER", "INFO").decode() for n in nodes]
            if all("cluster_state:ok" in i and f"cluster_known_nodes:{len(nodes)}" in i for i in infos):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster did not form: {infos}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def stop(self) -> None:
        for proc in self.procs:
            stop_proc(proc)
