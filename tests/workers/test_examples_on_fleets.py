"""The real-training examples end to end: PPO on CartPole (workers/cartpole.py) and the character
transformer (workers/charlm.py), each run to done by ``pbt local`` and by real pbt-worker and
pbt-arbiter processes with checkpoints on a real S3 server, then the best member replayed by
``pbt replay`` to the same score and the same state, bit for bit.

Marked ``integration``: .ci/run runs these as its second stage (under CI=true they fail, never
skip). Small settings, as the study's --quick (the files' own environment and text).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import launch, pbt, status
from services import ROOT, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]  # minutes on a busy 2-core machine
# 4 members, 4 segments each: a best member usually descends through an exploit
TASKS = {"cartpole": ("cartpole.toml", ("population.size=4", "stop.steps=16", "ready.steps=4")),
         "charlm": ("charlm.toml", ("population.size=4", "stop.steps=40", "ready.steps=10"))}


def needs(task: str) -> None:
    if task == "cartpole":
        try:
            import gymnasium  # noqa: F401
            import stable_baselines3  # noqa: F401
        except ImportError as exc:
            unavailable(f"workers/cartpole.py needs the rl extra (pip install 'pbt-mq[rl]'): {exc}")


def sets(task: str) -> list[str]:
    return list(TASKS[task][1])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_pbt_local_runs_the_example_to_done(task, tmp_path):
    needs(task)
    args = [sys.executable, "-m", "pbt_mq", "local", f"workers/{TASKS[task][0]}", "--dir", str(tmp_path),
            "--quiet", "--workers", "2"]
    for s in sets(task):
        args += ["--set", s]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "done (all members finished)" in res.stdout and "best member: m00" in res.stdout
    assert "hyperparameter schedule of the best model" in res.stdout


@pytest.mark.parametrize("task", sorted(TASKS))
def test_real_workers_train_it_and_replay_reproduces_the_best_exactly(task, fleet, redis_url, s3_url, tmp_path):
    needs(task)
    fleet.start("arbiter", "a1", "--claim-idle-ms", "2000")
    for name in ("w1", "w2"):
        fleet.start("worker", name, "--threads", "1")  # as pbt local starts them on a 2-core machine
    exp = launch(redis_url, s3_url, *sets(task), file=str(ROOT / "workers" / TASKS[task][0]))
    res = pbt("wait", exp, "--timeout", "540", "--redis", redis_url, timeout=600)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    st = status(redis_url, exp)
    assert st["state"] == "done" and all(m["state"] == "done" for m in st["members"])
    out = tmp_path / "export"
    res = pbt("export", exp, "--best", "-o", str(out), "--redis", redis_url)
    assert res.returncode == 0 and "verified" in res.stdout, res.stderr
    res = pbt("replay", str(out), "--check", "--json", "--threads", "1", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    assert got["exact"] and got["same_state"] is True
    assert got["final_score"] == got["recorded_score"] == st["best"]["score"]
    assert all(row["replayed"] == row["recorded"] for row in got["segments"])
