"""``pbt bench --dashboard``: what watching costs the arbiters.

The control-plane benchmark (``control.measure``: one arbiter deciding synthetic events as fast
as it can) runs with no dashboard page open and with N, alternately, round after round. One
real ``pbt dashboard`` process serves them all (started as a user would, so this module imports
nothing of the dashboard); each page is a process that loads the page's files once, follows
the experiment's event stream and polls the experiments list every 2 s, as the browser does.
The table gives decisions/s and latency of both, their ratio, the dashboard's CPU, and the
frames the pages received (proof that they were watching).
"""

from __future__ import annotations

import http.client
import importlib.util
import multiprocessing as mp
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from pbt_mq.broker.connect import connect
from pbt_mq.tools.bench.control import measure

ASSETS = ("/", "/static/app.js", "/static/app.css", "/static/vendor/chart.umd.min.js")
LIST_EVERY_S = 2.0


@contextmanager
def dashboard_process(url: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``pbt dashboard --port 0`` on loopback; yields (process, its base URL)."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        raise ImportError("pbt bench --dashboard needs the dashboard extra: pip install 'pbt-mq[dashboard]'")
    proc = subprocess.Popen([sys.executable, "-m", "pbt_mq", "dashboard", "--redis", url, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        line, deadline = b"", time.monotonic() + 60
        while b"\n" not in line and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.2)[0]:
                line += os.read(proc.stdout.fileno(), 4096)
        found = re.search(rb"http://[^/\s]+/", line)
        if not found:
            raise RuntimeError(f"pbt dashboard did not start: {line.decode(errors='replace').strip()}")
        yield proc, found.group(0).decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(host: str, port: int, path: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        res = conn.getresponse()
        return len(res.read())
    finally:
        conn.close()


def _page(base: str, exp: str, ready: Any, stop: Any, out: Any) -> None:
    """One open page: its files once, then the experiment's stream and the list every 2 s."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    for path in ASSETS:
        _get(host, port, path)
    s = socket.create_connection((host, port), timeout=30)
    s.sendall(f"GET /api/experiments/{exp}/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
              "Accept: text/event-stream\r\n\r\n".encode())
    frames, received, tail, said_ready, next_list = 0, 0, b"", False, time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_list:
            _get(host, port, "/api/experiments")
            next_list += LIST_EVERY_S
        if not select.select([s], [], [], 0.1)[0]:
            continue
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        received += len(chunk)
        data = tail + chunk
        frames += data.count(b"event: frame") - tail.count(b"event: frame")
        tail = data[-16:]
        if frames and not said_ready:
            ready.put(1)
            said_ready = True
    s.close()
    out.put((frames, received))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


@contextmanager
def pages(base: str, pid: int, exp: str, n: int, into: dict[str, float]) -> Iterator[None]:
    """``n`` pages watching ``exp`` while the block runs; ``into`` gets the dashboard's CPU and the frames."""
    ctx = mp.get_context("fork")
    ready, stop, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_page, args=(base, exp, ready, stop, out), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)  # every page has its first frame: they are watching
    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - t0
        into["dashboard_cpu"] = (_cpu_s(pid) - cpu0) / wall
        stop.set()
        got = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=10)
        into["frames_per_s"] = sum(f for f, _ in got) / wall
        into["kb_per_s"] = sum(b for _, b in got) / wall / 1024


def measure_dashboard(url: str, populations: list[int], clients: int, decisions: int, latency_samples: int,
                      rounds: int) -> list[dict[str, Any]]:
    """Per population: the control-plane figures with 0 and with ``clients`` pages, alternating."""
    r = connect(url)
    rows = []
    with dashboard_process(url) as (proc, base):
        for pop in populations:
            runs: dict[int, list[dict[str, float]]] = {0: [], clients: []}
            for _ in range(rounds):
                for n in (0, clients):
                    extra: dict[str, float] = {}
                    watch = (lambda exp, n=n, extra=extra: pages(base, proc.pid, exp, n, extra)) if n else None
                    runs[n].append({**measure(r, pop, decisions, latency_samples, watch=watch), **extra})
            base_rate = statistics.fmean(x["decisions_per_s"] for x in runs[0])
            for n in (0, clients):
                rs = runs[n]
                rows.append({
                    "population": pop, "pages": n, "rounds": len(rs),
                    "decisions_per_s": statistics.fmean(x["decisions_per_s"] for x in rs),
                    "decisions_per_s_runs": [round(x["decisions_per_s"]) for x in rs],
                    "p50_ms": statistics.fmean(x["p50_ms"] for x in rs),
                    "p99_ms": statistics.fmean(x["p99_ms"] for x in rs),
                    "vs_none": statistics.fmean(x["decisions_per_s"] for x in rs) / base_rate,
                    "dashboard_cpu": statistics.fmean(x["dashboard_cpu"] for x in rs) if n else None,
                    "frames_per_s": statistics.fmean(x["frames_per_s"] for x in rs) if n else None,
                })
    return rows


def format_dashboard(rows: list[dict[str, Any]]) -> str:
    out = (f"{'population':>10} | {'pages':>5} | {'decisions/s':>11} | {'runs':>17} | {'vs none':>7} | {'p50 ms':>6}"
           f" | {'p99 ms':>6} | {'dashboard CPU':>13} | {'frames/s':>8}\n")
    out += "-" * 108 + "\n"
    for row in rows:
        cpu = "-" if row["dashboard_cpu"] is None else f"{row['dashboard_cpu']:.0%}"
        fps = "-" if row["frames_per_s"] is None else f"{row['frames_per_s']:.1f}"
        runs = ",".join(str(x) for x in row["decisions_per_s_runs"])
        out += (f"{row['population']:>10} | {row['pages']:>5} | {row['decisions_per_s']:>11.0f} | {runs:>17} |"
                f" {row['vs_none']:>7.2f} | {row['p50_ms']:>6.2f} | {row['p99_ms']:>6.2f} | {cpu:>13} | {fps:>8}\n")
    return out
