"""Issue 24: numbers a user types are checked like every setting: one line, exit 2, nothing started."""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request

import pytest
from helpers import TOY, launch, pbt
from services import Dashboard, unavailable


@pytest.mark.parametrize("workers", ["0", "-1", "100000", "two"])
def test_pbt_local_refuses_a_worker_count_out_of_bounds(workers, tmp_path):
    res = pbt("local", TOY, f"--workers={workers}", "--dir", str(tmp_path / "wd"), timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"pbt local: error: argument --workers: expected an integer in [1, 256], got '{workers}'"]
    assert not (tmp_path / "wd").exists()  # nothing created, nothing started


def test_a_flag_is_checked_as_its_variable_is():
    res = pbt("local", TOY, "--workers", "3", "--dir", "/nonexistent/x", "--help")
    assert res.returncode == 0
    res = pbt("arbiter", "--claim-idle-ms", "0")
    assert res.returncode == 2 and "--claim-idle-ms: expected an integer >= 1 (ms), got '0'" in res.stderr, res.stderr


@pytest.mark.timeout(240)
def test_the_population_bound_is_held_by_launch_status_and_the_dashboard(redis_url, tmp_path):
    """10,000 members (parse.MAX_POPULATION): launched, shown and served; one more is one line, exit 2."""
    over = pbt("launch", TOY, "--set", "population.size=10001", "--redis", redis_url, "--store", f"file://{tmp_path}")
    assert over.returncode == 2 and over.stderr.strip().splitlines() == [
        "pbt: error: population.size: must be <= 10000, got 10001"], over.stderr
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=10000")
    st = pbt("status", exp, "--json", "--redis", redis_url)
    assert st.returncode == 0 and len(json.loads(st.stdout)["members"]) == 10000
    assert pbt("status", exp, "--redis", redis_url).stdout.count("\n") >= 10000
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn: pip install 'pbt-mq[dashboard]'")
    board = Dashboard(tmp_path / "logs", "--redis", redis_url)
    try:
        try:
            with urllib.request.urlopen(f"{board.url.rstrip('/')}/api/experiments/{exp}/members", timeout=60) as res:
                assert res.status == 200 and len(json.loads(res.read())["members"]) == 10000
        except urllib.error.HTTPError as exc:
            raise AssertionError(exc.read()[:300]) from None
    finally:
        board.stop()


@pytest.mark.parametrize("env, value, expects", [
    ("PBT_WORKER_ID", "bad id!", "1-100 letters, digits, '.', '_' or '-'"),
    ("PBT_QUEUE", "q q", "a queue name: 1-100 letters, digits, '.', '_' or '-'"),
    ("PBT_REDIS_URL", "redis://localhost:abc/0", "redis://[user:password@]host:port/db"),
    ("PBT_REDIS_URL", "redis://localhost:99999/0", "redis://[user:password@]host:port/db"),
])
def test_every_variable_is_checked_at_start(env, value, expects, monkeypatch):
    """Issue 24: these three were read late (or never) before; now every command refuses them at once."""
    monkeypatch.setenv(env, value)
    for cmd in (("list",), ("worker",), ("arbiter",)):
        res = pbt(*cmd, timeout=30)
        assert res.returncode == 2, (cmd, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f": error: {env}={value!r}: expected {expects}" in lines[0], (cmd, res.stderr)
