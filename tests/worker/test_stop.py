"""Clean stops: SIGTERM ends a worker and an arbiter within seconds whatever Redis is doing, and the
segment a stopped worker could not finish goes back to the queue, as on SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from helpers import TOY, launch, pbt
from services import ROOT, free_port, redis_binary, stop_proc, unavailable, wait_port

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Member, MemberState


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server this test may stop."""
    binary = redis_binary()
    if binary is None:
        unavailable("no redis-server binary")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_port(port, proc), "redis-server did not start"
    yield proc, f"redis://127.0.0.1:{port}/0"
    stop_proc(proc)


def start(role: str, name: str, url: str, logs: Path, *args: str) -> subprocess.Popen:
    flag = "--id" if role == "worker" else "--name"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PBT_LOG_LEVEL": "INFO"}
    return subprocess.Popen([sys.executable, "-m", "pbt_mq", role, "--redis", url, flag, name, *args],
                            stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def seconds_toy(tmp_path: Path, seconds: float) -> str:
    """The toy with segments of ``seconds`` of training (train(1) calls until then)."""
    path = tmp_path / "toy-seconds.toml"
    path.write_text(Path(TOY).read_text().replace("[ready]\nsteps = 4", f"[ready]\nseconds = {seconds}")
                    .replace("[stop]\nsteps = 100", "[stop]\nsteps = 1000000"))
    return str(path)


def running_member(r: redis.Redis, exp: str) -> str | None:
    for m in ("m000", "m001"):
        if Member.read(r, Keys(exp).member(m), "state").state is MemberState.RUNNING:
            return m
    return None


def exits_within(proc: subprocess.Popen, seconds: float) -> float:
    t = time.monotonic()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {seconds} s after SIGTERM")
    return time.monotonic() - t


@pytest.mark.parametrize("busy", [True, False], ids=["mid-segment", "idle"])
def test_sigterm_with_redis_stopped_exits_within_5_s(own_redis, tmp_path: Path, busy: bool) -> None:
    server, url = own_redis
    r = redis.Redis.from_url(url)
    worker = start("worker", "w1", url, tmp_path, "--grace-s", "30")
    arbiter = start("arbiter", "a1", url, tmp_path)
    try:
        if busy:  # a segment of 60 s: in flight when Redis goes
            exp = launch(url, f"file://{tmp_path / 'ckpt'}", "trainable_args.delay_s=0.01",
                         file=seconds_toy(tmp_path, 60))
            deadline = time.monotonic() + 60
            while running_member(r, exp) is None:
                assert time.monotonic() < deadline, (tmp_path / "w1.log").read_text()
                time.sleep(0.1)
        else:
            time.sleep(3)  # both idle in their loops, having talked to Redis
        server.send_signal(signal.SIGSTOP if busy else signal.SIGTERM)  # hung, or gone
        if not busy:
            server.wait(timeout=10)
        time.sleep(1.0)
        worker.send_signal(signal.SIGTERM)
        arbiter.send_signal(signal.SIGTERM)
        took = max(exits_within(worker, 10.0), exits_within(arbiter, 10.0))
    finally:
        server.send_signal(signal.SIGCONT)
        for p in (worker, arbiter):
            if p.poll() is None:
                p.kill()
    log = (tmp_path / "w1.log").read_text()
    assert took < 10.0  # the busy path gives up after two 1 s probes (about 2 s); room for a loaded machine
    assert "Traceback" not in log, log
    if busy:  # a 30 s grace, but the segment could never be published: given up on, not waited for
        assert "abandoning" in log and "to the reaper" in log, log


def test_sigterm_mid_segment_finishes_it_within_the_grace_period(own_redis, tmp_path: Path) -> None:
    """Redis is up: the worker finishes and publishes its segment, then exits; nothing is lost."""
    _, url = own_redis
    r = redis.Redis.from_url(url)
    worker = start("worker", "w1", url, tmp_path, "--grace-s", "90")  # its first segment imports torch: slow
    exp = launch(url, f"file://{tmp_path / 'ckpt'}", "population.size=1", "population.initial=[]",
                 "trainable_args.delay_s=0.01", file=seconds_toy(tmp_path, 2))  # 2 s segments
    deadline = time.monotonic() + 60
    while running_member(r, exp) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    exits_within(worker, 90.0)
    assert worker.returncode == 0, (tmp_path / "w1.log").read_text()
    assert r.xlen(Keys(exp).events) == 1  # published: the arbiter decides it when one runs
    assert Member.read(r, Keys(exp).member("m000"), "state").state is MemberState.READY
    assert pbt("status", exp, "--redis", url).returncode == 0
