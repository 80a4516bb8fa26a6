"""A rolling upgrade: an experiment launched by the previous release finishes when its arbiters and
workers are replaced by this release's, one by one, mid-run.

``tests/upgrade/pbt_mq-0.1.0.zip`` is the previous release's package exactly as it landed
(``git archive efcc0b7 pbt_mq``); its processes run from it with ``PYTHONPATH``, in a directory
where this release's package is not importable first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import PAPER_INIT_4, TOY, lineage_counts, pbt, status

from pbt_mq.core.ids import member_ids
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Meta
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records, replay_decisions

ROOT = Path(__file__).resolve().parents[1]
RELEASE_1 = ROOT / "tests" / "upgrade" / "pbt_mq-0.1.0.zip"
STOP = 120


class OldRelease:
    """Processes of the previous release: its package from the zip, this repo's ``workers`` examples."""

    def __init__(self, cwd: Path, logs: Path) -> None:
        self.cwd, self.logs = cwd, logs
        self.env = {**os.environ, "PYTHONPATH": f"{RELEASE_1}{os.pathsep}{ROOT}", "PBT_LOG_LEVEL": "INFO"}
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pbt_mq", *args], capture_output=True, text=True,
                              cwd=self.cwd, env=self.env, timeout=120)

    def start(self, role: str, name: str, *args: str) -> None:
        log = open(self.logs / f"old-{name}.log", "wb")
        flag = "--id" if role == "worker" else "--name"
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "pbt_mq", role, flag, name, *args],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=self.env)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.procs[name].send_signal(sig)
        self.procs[name].wait(timeout=60)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


def test_the_previous_release_is_what_the_zip_holds(tmp_path):
    old = OldRelease(tmp_path, tmp_path)
    res = old.run("--help")
    assert res.returncode == 0, res.stderr
    probe = subprocess.run([sys.executable, "-c", "import pbt_mq, pbt_mq.arbiter; print(pbt_mq.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=old.env, timeout=60)
    assert probe.stdout.strip().startswith(str(RELEASE_1)), probe.stderr  # the old package, not this one


def test_an_experiment_of_the_previous_release_finishes_under_this_one(fleet, redis_url, r, tmp_path):
    old = OldRelease(tmp_path, fleet.logs)
    try:
        res = old.run("launch", TOY, "--redis", redis_url, "--store", f"file://{tmp_path / 'ckpt'}",
                      "--set", "population.size=4", "--set", PAPER_INIT_4, "--set", f"stop.steps={STOP}",
                      "--set", "trainable_args.delay_s=0.02")
        assert res.returncode == 0, res.stderr
        exp = res.stdout.strip().splitlines()[-1]
        k = Keys(exp)
        old.start("arbiter", "old-a", "--redis", redis_url, "--claim-idle-ms", "1000")
        for w in ("old-w1", "old-w2"):
            old.start("worker", w, "--redis", redis_url)
        _wait(lambda: r.xlen(k.lineage) >= 16, fleet, "release 1 making progress")

        fleet.start("arbiter", "new-a", "--claim-idle-ms", "1000")  # both releases decide for a while
        fleet.start("worker", "new-w1")
        _wait(lambda: r.xlen(k.lineage) >= 24, fleet, "both releases deciding")
        old.stop("old-a")
        old.stop("old-w1")  # finishes its segment, then goes
        old.stop("old-w2", signal.SIGKILL)  # dies mid-segment: this release's reaper requeues it
        fleet.start("worker", "new-w2")

        done = pbt("wait", exp, "--timeout", "240", "--redis", redis_url, timeout=260)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{fleet.all_logs()}"
    finally:
        old.close()
    st = status(redis_url, exp)
    assert {m["state"] for m in st["members"]} == {"done"}
    assert all(m["scored_step"] == STOP for m in st["members"]), st["members"]
    counts = lineage_counts(r, exp)
    assert max(counts.values()) == 1  # every (member, seq) decided once, across both releases
    for m in member_ids(4):
        seqs = sorted(s for (mm, s) in counts if mm == m)
        assert seqs == list(range(len(seqs)))
    recs = records(r, exp)
    assert {rec.worker for rec in recs} >= {"old-w1", "new-w1"}  # both releases trained segments
    assert replay_decisions(load_config(r, exp), recs) == []  # this release re-derives release 1's decisions
    assert Meta.read(r, Keys(exp).meta, "schema").schema == 1  # launched by release 1, and says so
    # so this release's workers kept writing release 1's checkpoint format, which its workers read
    assert {rec.ckpt_key.rsplit(".", 1)[-1] for rec in recs if rec.ckpt_key} == {"pt"}
    assert {rec.worker for rec in recs if rec.start_key} >= {"old-w1", "new-w1"}


def _wait(cond, fleet, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}\n{fleet.all_logs()}"
        time.sleep(0.05)
