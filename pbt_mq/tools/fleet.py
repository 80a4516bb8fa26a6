"""A fleet on this machine: one ``pbt-arbiter`` and N ``pbt-worker`` processes, the same ones a
cluster runs; only the addresses differ. Used by ``pbt local``, ``pbt study`` and ``pbt bench``.

Each process has its own session (a Ctrl-C in the terminal reaches ``pbt local`` only, which then
stops them in order) and is killed if its parent dies (Linux): a ``pbt local`` killed outright
leaves nothing running, and ``pbt local --resume`` picks up what they were doing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pbt_mq.core import settings
from pbt_mq.tools.redis_server import die_with_parent, private_redis
from pbt_mq.worker.cache import default_limit_bytes as default_cache_bytes

ARBITER = "local-arbiter"  # the arbiter's consumer name: a restarted one takes over its pending events


def worker_id(i: int) -> str:
    return f"local-w{i}"


def import_root(file: Path, trainable: str) -> Path | None:
    """The directory a trainable's module path starts from, found from its experiment file upwards
    (``workers.toy:Toy`` beside ``workers/toy.toml``: the folder holding ``workers/``), or None."""
    top = trainable.split(":", 1)[0].split(".", 1)[0]
    for d in file.resolve().parents:
        if (d / top).is_dir() or (d / f"{top}.py").is_file():
            return d
    return None


def on_pythonpath(root: Path | None) -> None:
    """Put ``root`` first on the PYTHONPATH of the processes this one starts from now on (its workers)."""
    if root is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)


def spawn(role: str, args: list[str], logfile: Path) -> subprocess.Popen:
    with open(logfile, "ab") as out:  # appended: a resumed run keeps the previous one's log
        return subprocess.Popen(
            [sys.executable, "-m", "pbt_mq", role, *args], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL),
        )


def terminate(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM (a worker finishes its segment), then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def daemons(url: str, wd: Path, workers: int, keep_events: bool = False) -> Iterator[list[subprocess.Popen]]:
    """One arbiter and ``workers`` workers on ``url``, logging to ``wd/logs``; stopped on exit. With
    ``keep_events`` the arbiter never trims the events streams (a study reads them back)."""
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        keep = ["--events-retention-s", "-1"] if keep_events else []
        procs.append(spawn("arbiter", ["--redis", url, "--name", ARBITER, "--claim-idle-ms", "5000", *keep],
                           wd / "logs" / "arbiter.log"))
        threads = str(max(1, (os.cpu_count() or 1) // workers))  # no oversubscription
        # the workers share this host: its default checkpoint cache, split between them (unless set)
        cache = [] if settings.read_if_set("PBT_CACHE_MB") is not None else [
            "--cache-mb", str(max(1, (default_cache_bytes() // workers) >> 20))]
        for i in range(workers):
            args = ["--redis", url, "--id", worker_id(i), "--threads", threads, *cache]
            procs.append(spawn("worker", args, wd / "logs" / f"worker-{i}.log"))
        yield procs
    finally:
        terminate(procs)


@contextlib.contextmanager
def fleet(wd: Path, workers: int, keep_events: bool = False) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A private redis-server that keeps nothing on disk, one arbiter and ``workers`` workers; all
    stopped on exit (also on Ctrl-C). Yields (redis URL, processes). Any number of experiments may
    be launched on it, one after the other, on the same warm workers (``pbt study`` does)."""
    with private_redis(wd) as url, daemons(url, wd, workers, keep_events) as procs:
        yield url, procs
