"""`pbt local`: the one-command single-machine run, the state it keeps in its work dir, the
commands that read it afterwards with nothing running, and `--resume` after Ctrl-C or kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, TOY, lineage_counts

from pbt_mq.broker.connect import connect
from pbt_mq.core.ids import member_ids
from pbt_mq.state.experiment import status
from pbt_mq.tools.fleet import import_root
from pbt_mq.tools.workdir import PORT_FILE, serve_workdir

SLOW = ["--set", "trainable_args.delay_s=0.3"]  # ~8 s a run: time to interrupt it mid-way


def env() -> dict[str, str]:
    """As a user's shell: no PBT_REDIS_URL (nothing says where Redis is), the worktree importable."""
    e = {k: v for k, v in os.environ.items() if k not in ("PBT_REDIS_URL", "PBT_LOCAL_DIR")}
    e["PYTHONPATH"] = str(ROOT)
    return e


def pbt(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pbt_mq", *args], capture_output=True, text=True, cwd=cwd,
                          env=env(), timeout=timeout)


def start_local(cwd: Path, *args: str) -> subprocess.Popen:
    """`pbt local` in its own process group, as a shell runs a foreground job."""
    return subprocess.Popen([sys.executable, "-m", "pbt_mq", "local", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env(), start_new_session=True)


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited


def all_gone(pids: list[int], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def state_of(wd: Path, exp: str) -> dict:
    """``pbt status --json``'s document, read in-process (the live server, else the saved state)."""
    with serve_workdir(wd) as url:
        return status(connect(url), exp)


def wait_mid_run(cwd: Path, wd: Path, proc: subprocess.Popen) -> str:
    """Until every member is a few segments in; the first look is `pbt list` through the port file."""
    deadline = time.monotonic() + 120
    exp = None
    while exp is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        if (wd / PORT_FILE).exists():
            res = pbt(cwd, "list", "--local", str(wd))
            assert res.returncode == 0 and "reading the live pbt local in" in res.stderr, res.stderr
            exp = res.stdout.split()[0] if res.stdout.strip() else None
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        st = state_of(wd, exp)
        if min(m["step"] for m in st["members"]) >= 12:
            assert st["state"] == "running" and max(m["step"] for m in st["members"]) < 100, st
            return exp
        time.sleep(0.2)


def check_finished_once(wd: Path, exp: str) -> None:
    """Done, every member at the stop step, and each (member, seq) decided exactly once, seq 0..n-1."""
    with serve_workdir(wd) as url:
        r = connect(url)
        counts = lineage_counts(r, exp)
        st = status(r, exp)
    assert counts and max(counts.values()) == 1, counts
    for m in member_ids(2):
        seqs = sorted(s for member, s in counts if member == m)
        assert seqs == list(range(len(seqs))), (m, seqs)
    assert st["state"] == "done", st
    assert all(m["state"] == "done" and m["step"] == 100 and m["scored_step"] == 100 for m in st["members"]), st


def test_a_run_leaves_its_state_report_and_best_model_and_every_reader_works_with_nothing_running(tmp_path):
    res = pbt(tmp_path, "local", TOY, "--quiet", "--workers", "2", "--set", "population.size=4")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "done (all members finished)" in out
    assert "best member: m00" in out and "q = " in out and "(step 100)" in out
    assert "hyperparameter schedule of the best model" in out
    assert "steps      0-4" in out and "steps     96-100" in out
    assert "decisions/s over the run" in out
    wd = tmp_path / ".pbt-local"
    exp = out.split("pbt local: ", 1)[1].split(":", 1)[0]
    assert (wd / "checkpoints").is_dir() and (wd / "logs" / "arbiter.log").is_file()
    assert (wd / "appendonly.aof").is_file() or (wd / "appendonlydir").is_dir()
    assert not (wd / PORT_FILE).exists()
    assert f"report: .pbt-local/{exp}/report.png" in out and (wd / exp / "report.png").stat().st_size > 10_000
    assert f"best model: .pbt-local/{exp}/best/" in out and ": checkpoint.safetensors, schedule.json" in out
    assert {p.name for p in (wd / exp / "best").iterdir()} >= {"checkpoint.safetensors", "schedule.json", "experiment.toml"}
    assert f"  pbt plot {exp} -o report.png" in out and f"  pbt lineage {exp}\n" in out

    # from the directory it ran in: no --redis, no PBT_REDIS_URL, no server running
    st = pbt(tmp_path, "status", exp, "--json")
    assert st.returncode == 0, st.stderr
    assert st.stderr.strip() == "pbt: reading the saved state of .pbt-local (pbt local is not running there)"
    best = json.loads(st.stdout)["best"]
    lin = pbt(tmp_path, "lineage", exp, "--json")
    assert lin.returncode == 0, lin.stderr
    assert json.loads(lin.stdout)["target"]["member"] == best["member"]
    plot = pbt(tmp_path, "plot", exp, "-o", "again.png")
    assert plot.returncode == 0 and (tmp_path / "again.png").stat().st_size > 10_000, plot.stderr
    ex = pbt(tmp_path, "export", exp, "--best", "-o", "best")
    assert ex.returncode == 0 and "verified" in ex.stdout, ex.stderr
    assert (tmp_path / "best" / "checkpoint.safetensors").read_bytes() == (wd / exp / "best" / "checkpoint.safetensors").read_bytes()
    ls = pbt(tmp_path, "list")
    assert ls.returncode == 0 and ls.stdout.startswith(f"{exp}  done  best q={best['score']:.6g} ({best['member']},")

    # from anywhere else, with --local DIR
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["status", exp], ["wait", exp, "--timeout", "5"]):  # every reader takes --local: test_workdir
        got = pbt(elsewhere, *args, "--local", str(wd))
        assert got.returncode == 0 and "reading the saved state of" in got.stderr, (args, got.stderr)
    nothing = pbt(elsewhere, "status", exp, "--local", str(elsewhere))
    assert nothing.returncode == 1 and nothing.stderr.count("\n") == 1, nothing.stderr
    assert "no saved pbt local state there" in nothing.stderr


def test_kill_9_of_every_process_then_resume_finishes_the_experiment_deciding_each_segment_once(tmp_path):
    wd = tmp_path / "wd"
    proc = start_local(tmp_path, TOY, "--dir", str(wd), "--quiet", *SLOW)
    exp = wait_mid_run(tmp_path, wd, proc)
    kids = children(proc.pid)  # redis-server, the arbiter, two workers
    assert len(kids) == 4, kids
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert all_gone(kids)

    st = pbt(tmp_path, "status", exp, "--local", str(wd))  # the port file left behind is stale
    assert st.returncode == 0 and "stale" in st.stderr and "state=running" in st.stdout, st.stdout + st.stderr

    resumed = start_local(tmp_path, "--resume", "--dir", str(wd), "--quiet")
    deadline = time.monotonic() + 60
    while not (wd / PORT_FILE).exists() or (json.loads((wd / PORT_FILE).read_text())["pid"] != resumed.pid):
        assert time.monotonic() < deadline and resumed.poll() is None, resumed.communicate()[0]
        time.sleep(0.1)
    waited = pbt(tmp_path, "wait", exp, "--timeout", "180", "--local", str(wd))  # sees the live run end
    out, _ = resumed.communicate(timeout=120)
    assert waited.returncode == 0 and "reading the live pbt local in" in waited.stderr, waited.stdout + waited.stderr
    assert resumed.returncode == 0, out
    assert f"pbt local: resuming {exp}: 0/2 members finished" in out
    assert "best member: m00" in out and f"best model: wd/{exp}/best/" in out
    check_finished_once(wd, exp)


def test_ctrl_c_pauses_a_new_run_leaves_it_paused_and_resume_finishes_it(tmp_path):
    wd = tmp_path / "wd"
    proc = start_local(tmp_path, TOY, "--dir", str(wd), "--quiet", *SLOW)
    old = wait_mid_run(tmp_path, wd, proc)
    kids = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground process group
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert f"pbt local: {old} paused; resume with `pbt local --resume --dir wd`" in out  # as typed: cwd-relative
    assert all_gone(kids), out  # everything it started is stopped
    assert not (wd / PORT_FILE).exists()
    ls = pbt(tmp_path, "list", "--local", str(wd))
    assert ls.stdout.startswith(f"{old}  stopped  ") and "paused" in ls.stdout, ls.stdout
    before = state_of(wd, old)["members"]

    new = pbt(tmp_path, "local", TOY, "--dir", str(wd), "--quiet")  # the paused one stays paused
    assert new.returncode == 0, new.stdout + new.stderr
    assert f"pbt local: {old} unfinished here: paused; resume with `pbt local --resume --dir wd`" in new.stdout
    after = state_of(wd, old)
    assert after["state"] == "stopped"
    assert [(m["step"], m["seq"], m["score"]) for m in after["members"]] == [
        (m["step"], m["seq"], m["score"]) for m in before]  # the new run's workers ran none of its segments

    res = pbt(tmp_path, "local", "--resume", "--dir", str(wd), "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"pbt local: resuming {old}" in res.stdout
    check_finished_once(wd, old)
    ls = pbt(tmp_path, "list", "--local", str(wd))
    assert [line.split()[1] for line in ls.stdout.splitlines()] == ["done", "done"], ls.stdout
    again = pbt(tmp_path, "local", "--resume", "--dir", str(wd), "--quiet")
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stdout + again.stderr


def test_an_example_runs_from_any_directory_though_it_is_no_installed_package(tmp_path):
    """workers/ is a folder of the checkout (issue 25): `pbt local` puts the folder that holds a
    trainable's top package, found from the experiment file upwards, on its workers' PYTHONPATH."""
    assert import_root(ROOT / "workers" / "toy.toml", "workers.toy:Toy") == ROOT
    assert import_root(tmp_path / "exp.toml", "nosuchpackage_xyz.mod:T") is None
    e = {k: v for k, v in env().items() if k != "PYTHONPATH"}  # as a user's shell in another directory
    res = subprocess.run([sys.executable, "-m", "pbt_mq", "local", TOY, "--quiet", "--dir", str(tmp_path / "wd"),
                          "--set", "population.size=2", "--set", "stop.steps=12"], capture_output=True, text=True,
                         cwd=tmp_path, env=e, timeout=180)
    assert res.returncode == 0 and "done (all members finished)" in res.stdout, res.stdout + res.stderr
