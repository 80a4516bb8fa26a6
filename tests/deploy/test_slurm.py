"""deploy/slurm on a real SLURM: the shipped sbatch scripts run the toy experiment to done.

A single-node cluster on loopback, started here as root: ``munged`` with a key this test makes,
``slurmctld`` and ``slurmd`` (``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``)
on free ports, every file under one temp dir, so a second run on the same machine cannot
collide. The node has this machine's CPUs and memory and no GPU, so what the scripts ask of a
GPU node (``--gres=gpu:1``, 8 CPUs, 64 GB) is overridden on the ``sbatch`` command line, as a user
would; ``GresTypes=gpu`` makes SLURM refuse a GPU request here, so the override is proven to
work. Mid-run one worker job gets SLURM's time-limit warning (``scancel --batch --signal=USR1``,
what ``--signal=B:USR1@300`` sends): it finishes its segment, requeues itself and its next life
rejoins under the same worker id; then the other worker job is ``scancel``-ed. The experiment
still ends with every member at the stop step and each (member, seq) decided once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from helpers import event_counts, launch, lineage_counts, pbt, status
from services import ROOT, free_port, unavailable

from pbt_mq.core.keys import Keys, worker_key
from pbt_mq.core.model import Heartbeat
from pbt_mq.core.protocol import ReadyEvent

pytestmark = pytest.mark.integration

SCRIPTS = ROOT / "deploy" / "slurm"
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "squeue", "sinfo")
CLUSTER = "pbtci"
NODE = "pbtnode"
KILL_WAIT_S = 30  # scancel: SIGTERM, then SIGKILL this much later
# What the scripts ask of a GPU node and this machine lacks, turned off on sbatch's command line.
CPU_ONLY = {"worker.sbatch": ("--gres=none", "--cpus-per-task=1", "--mem=500M", "--array=0-1"),
            "arbiter.sbatch": ("--mem=300M",)}
STOP_STEPS, DELAY_S = 200, 0.25  # 50 segments per member, ~0.3 s each: room for a requeue (torch loads again) and a scancel


def binary(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def wait_for(what: str, ok: Callable[[], object], timeout_s: float, report: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{report()}")


class Slurm:
    """munged + slurmctld + slurmd on loopback, all state, spool, sockets and logs under ``base``."""

    def __init__(self, base: Path):
        self.base = base
        self.conf = base / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        b = self.base
        for d, mode in (("munge", 0o700), ("sock", 0o755), ("log", 0o755), ("state", 0o700), ("spool", 0o755)):
            (b / d).mkdir(mode=mode)
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = b / "sock" / "munge.sock"
        self._spawn("munged", binary("munged"), "-F", f"--socket={sock}", f"--key-file={key}",
                    f"--pid-file={b / 'sock' / 'munged.pid'}", f"--log-file={b / 'log' / 'munged.log'}",
                    f"--seed-file={b / 'munge' / 'seed'}")
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        hardware = subprocess.run([binary("slurmd"), "-C"], capture_output=True, text=True, timeout=60).stdout
        node = " ".join(w for w in hardware.split() if re.match(r"(CPUs|Boards|SocketsPerBoard|CoresPerSocket|"
                                                                   r"ThreadsPerCore|RealMemory)=", w))
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(f"""\
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={b / 'state'}
SlurmdSpoolDir={b / 'spool'}
SlurmctldPidFile={b / 'sock' / 'slurmctld.pid'}
SlurmdPidFile={b / 'sock' / 'slurmd.pid'}
SlurmctldLogFile={b / 'log' / 'slurmctld.log'}
SlurmdLogFile={b / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/linear
SelectTypeParameters=CR_Memory
GresTypes=gpu
KillWait={KILL_WAIT_S}
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName=pbt Nodes={NODE} Default=YES MaxTime=INFINITE OverSubscribe=FORCE:16 State=UP
""")
        self._spawn("slurmctld", binary("slurmctld"), "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", binary("slurmd"), "-D", "-N", NODE, "-f", str(self.conf))
        wait_for("sinfo to show the node idle", lambda: self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip() == "idle",
                 60, self.report)

    def _spawn(self, name: str, *argv: str | None) -> None:
        log = open(self.base / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def run(self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([binary(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True, timeout=60,
                              env={**self.env, **(env or {})}, cwd=cwd)

    def sbatch(self, script: str, *opts: str, env: dict[str, str], cwd: Path) -> str:
        res = self.run("sbatch", "--parsable", *opts, str(SCRIPTS / script), env=env, cwd=cwd)
        assert res.returncode == 0, f"sbatch {script}: {res.stderr}\n{self.report()}"
        return res.stdout.strip().split(";")[0]

    def job(self, job: str) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ...); {} once SLURM forgot the job."""
        out = self.run("scontrol", "-o", "show", "job", job).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def report(self, *extra: Path) -> str:
        parts = [f"squeue:\n{self.run('squeue', '-o', '%i %T %r').stdout}"]
        for p in [*sorted((self.base / "log").glob("*")), *extra]:
            text = p.read_text(errors="replace") if p.exists() else "(missing)"
            parts.append(f"===== {p.name}\n{text[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job and wait for its processes to go, then stop the daemons; a process
        still carrying this cluster's SLURM_CONF afterwards (a job's, slurmstepd) is killed by id."""
        if "slurmctld" in self.procs:
            self.run("scancel", "--user", "root")
            deadline = time.monotonic() + KILL_WAIT_S + 15
            while self.run("squeue", "-h").stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self._our_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _our_pids(self) -> list[int]:
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if marker in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except OSError:
                    continue
        return pids


@pytest.fixture
def slurm() -> Iterator[Slurm]:
    missing = [b for b in BINARIES if not binary(b)]
    if missing:
        unavailable(f"no {', '.join(missing)}: apt-get install --no-install-recommends slurm-wlm munge")
    if os.geteuid() != 0:
        unavailable("a test SLURM (slurmd runs jobs as their user) needs root")
    base = Path(tempfile.mkdtemp(prefix="pbt-slurm-"))  # short: munge's socket path must fit in sun_path
    base.chmod(0o755)
    cluster = Slurm(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def exits(log: Path) -> list[str]:
    """The exit statuses the script logged, one per life of the job."""
    return re.findall(r"exited with (\d+)", log.read_text()) if log.exists() else []


def heartbeat_pid(r: redis.Redis, worker: str) -> int | None:
    return Heartbeat.read(r, worker_key(worker), "pid").pid


def test_a_fleet_on_slurm_survives_a_requeue_and_a_scancel(slurm, redis_url, r, tmp_path):
    run = tmp_path / "run"  # the run directory: pbt.env, the jobs' logs
    run.mkdir()
    store = f"file://{tmp_path / 'ckpt'}"
    (run / "pbt.env").write_text(f"PBT_REDIS_URL={redis_url}\nPBT_STORE_URL={store}\nPBT_DEVICE=cpu\n"
                                 f"PBT_HEARTBEAT_S=0.5\nPBT_LOG_LEVEL=INFO\nPYTHONPATH={ROOT}\n"
                                 "PBT_EVENTS_RETENTION_S=-1\n")  # the events are counted at the end
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # pbt-worker beside this python
    # the scripts as shipped ask for a GPU, which this node has not: SLURM refuses them
    as_shipped = [o for o in CPU_ONLY["worker.sbatch"] if not o.startswith("--gres")]
    gpu = slurm.run("sbatch", "--parsable", *as_shipped, str(SCRIPTS / "worker.sbatch"), env=env, cwd=run)
    assert gpu.returncode != 0 and "not available" in gpu.stderr, gpu

    arbiters = slurm.sbatch("arbiter.sbatch", *CPU_ONLY["arbiter.sbatch"], env=env, cwd=run)
    workers = slurm.sbatch("worker.sbatch", *CPU_ONLY["worker.sbatch"], env=env, cwd=run)
    ids = [f"{CLUSTER}-{workers}_{i}" for i in (0, 1)]
    logs = [run / f"pbt-worker-{workers}_{i}.log" for i in (0, 1)] + [run / f"pbt-arbiter-{arbiters}_{i}.log" for i in (0, 1)]

    def report() -> str:
        return slurm.report(*logs)

    wait_for("both workers' heartbeats", lambda: all(heartbeat_pid(r, w) for w in ids), 120, report)
    exp = launch(redis_url, store, f"stop.steps={STOP_STEPS}", f"trainable_args.delay_s={DELAY_S}")
    lineage = Keys(exp).lineage
    wait_for("4 decisions", lambda: r.xlen(lineage) >= 4, 120, report)

    # SLURM's time-limit warning to worker 1: it finishes its segment, requeues its job and comes back
    old_pid = heartbeat_pid(r, ids[1])
    res = slurm.run("scancel", "--batch", "--signal=USR1", f"{workers}_1")
    assert res.returncode == 0, res.stderr

    pending_since: list[float] = []

    def back() -> bool:
        job = slurm.job(f"{workers}_1")
        if job.get("JobState") == "PENDING":  # SLURM holds a requeued job ~2 min (BeginTime): not needed here,
            pending_since.append(time.monotonic())  # but slurmd needs a few seconds to let go of the old one
            if time.monotonic() - pending_since[0] >= 5:  # (sooner: "Job credential revoked", the job fails)
                slurm.run("scontrol", "update", f"JobId={workers}_1", "StartTime=now")
        return job.get("Restarts") == "1" and heartbeat_pid(r, ids[1]) not in (None, old_pid)

    wait_for("worker 1 to requeue and rejoin", back, 180, report)
    assert exits(logs[1]) == ["0"], report()  # its first life stopped cleanly, once
    assert slurm.job(f"{workers}_0").get("Restarts") == "0" and exits(logs[0]) == [], \
        f"only task 1 was requeued\n{report()}"

    # scancel worker 0 mid-run: SIGTERM, it finishes its segment and exits; worker 1 carries on alone
    assert status(redis_url, exp)["state"] == "running", f"the run ended too early for the test\n{report()}"
    alone_ms = int(time.time() * 1000)
    assert slurm.run("scancel", f"{workers}_0").returncode == 0
    wait_for("worker 0 to exit", lambda: exits(logs[0]), KILL_WAIT_S + 30, report)
    assert exits(logs[0]) == ["0"], report()  # not killed: it finished its segment
    wait_for("worker 0's job to be cancelled", lambda: slurm.job(f"{workers}_0").get("JobState", "CANCELLED") == "CANCELLED",
             30, report)

    res = pbt("wait", exp, "--timeout", "300", "--redis", redis_url, timeout=320)
    assert res.returncode == 0, f"{res.stdout}{res.stderr}\n{report()}"
    st = status(redis_url, exp)
    assert {m["state"] for m in st["members"]} == {"done"}
    assert all(m["scored_step"] == STOP_STEPS for m in st["members"]), st["members"]
    counts = lineage_counts(r, exp)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]  # each (member, seq) decided once
    for m in st["members"]:
        assert sorted(s for (mm, s) in counts if mm == m["id"]) == list(range(m["seq"] + 1))
    assert max(event_counts(r, exp).values()) == 1, "a segment ran twice"
    late = [eid for eid, f in r.xrange(Keys(exp).events, f"{alone_ms}-0", "+") if ReadyEvent.decode(f[b"msg"]).worker == ids[1]]
    assert late, f"worker 1's second life trained nothing\n{report()}"
    assert [slurm.job(f"{arbiters}_{i}").get("JobState") for i in (0, 1)] == ["RUNNING", "RUNNING"]
