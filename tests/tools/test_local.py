"""`pbt local`: the one-command single-machine run, and its cleanup (also on Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import ROOT, TOY


def children_alive(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_pbt_local_runs_the_toy_end_to_end(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pbt_mq", "local", TOY, "--dir", str(tmp_path), "--quiet", "--workers", "2",
         "--set", "population.size=4"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "done (all members finished)" in out
    assert "best member: m00" in out and "q = " in out
    assert "hyperparameter schedule of the best model" in out
    assert "steps      0-4" in out and "steps     96-100" in out
    assert "decisions/s over the run" in out
    assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "logs" / "arbiter.log").is_file()


def test_ctrl_c_stops_everything_it_started(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pbt_mq", "local", TOY, "--dir", str(tmp_path), "--quiet",
         "--set", "trainable_args.delay_s=0.2", "--set", "stop.steps=4000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while len(children_alive(proc.pid)) < 4 and time.monotonic() < deadline:  # redis, arbiter, 2 workers
        time.sleep(0.1)
    kids = children_alive(proc.pid)
    assert len(kids) >= 4, kids
    pids = [int(k.split()[0]) for k in kids]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"pid {pid} survived Ctrl-C:\n{out}"
