"""The Lightning and Hugging Face examples under `pbt local` with quick settings: real workers,
real libraries, a real population that exploits. Synchronous rounds: every decision ranks the whole
population, so the worst member is exploited at each round (asynchronous boards by step may rank
a bottom member that always reports first on its own, and never exploit in a run this short)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.integration
NEEDS = [("lightning", "lightning"), ("transformers", "hf"), ("accelerate", "hf")]


def run_local(tmp_path, file: str, *sets: str) -> str:
    args = [sys.executable, "-m", "pbt_mq", "local", str(ROOT / "workers" / file), "--dir", str(tmp_path), "--quiet",
            "--workers", "2", "--set", "exploit.synch=true"]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("worker-*.log")))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    assert "done (all members finished)" in res.stdout, res.stdout
    decisions = re.search(r"\d+ segments, \d+ decisions (\{.*\})", res.stdout)
    assert decisions, res.stdout
    counts = ast.literal_eval(decisions.group(1))
    assert counts.get("exploit", 0) > 0, res.stdout
    assert "Traceback" not in logs, logs
    return res.stdout


def test_lightning_digits_reaches_done_with_exploits(tmp_path):
    out = run_local(tmp_path, "lightning_digits.toml", "stop.steps=132", "ready.steps=22")
    best = float(re.search(r"accuracy = ([0-9.]+)", out).group(1))
    assert best > 0.8  # six epochs of digits: far above chance (0.1)


def test_hf_tiny_reaches_done_with_exploits(tmp_path):
    out = run_local(tmp_path, "hf_tiny.toml", "stop.steps=60", "ready.steps=10")
    best = float(re.search(r"eval_loss = ([0-9.]+)", out).group(1))
    assert best < 3.8  # below a uniform guess over the characters (ln 80 = 4.4)
