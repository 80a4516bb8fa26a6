"""``pbt bench`` end to end, as a user runs it: a subprocess against the real S3 server (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from services import unavailable

from pbt_mq.store.open import open_store

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ["size_mb", "save_mb_s", "raw_put_mb_s", "save_ratio", "load_mb_s", "raw_get_mb_s", "load_ratio"]


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pbt_mq", "bench", *args], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env
    )


def check_figures(out: str, store: str | None) -> None:
    doc = json.loads(out)
    if store:
        assert doc["store"] == store
    assert doc["repeat"] == 1
    assert doc["part_size_mb"] > 0
    [row] = doc["data_plane"]
    assert set(FIGURES) <= set(row)
    assert 7.5 < row["size_mb"] < 8.5
    for k in FIGURES:
        assert isinstance(row[k], float) and row[k] > 0, k


def test_bench_quick_json_on_s3(s3_url: str) -> None:
    proc = bench("--quick", "--json", "--store", s3_url)
    assert proc.returncode == 0, proc.stderr
    check_figures(proc.stdout, s3_url)
    assert list(open_store(s3_url).list()) == []  # it cleans up after itself


def test_bench_quick_json_on_a_local_dir(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'st'}"
    proc = bench("--quick", "--json", "--store", url)
    assert proc.returncode == 0, proc.stderr
    check_figures(proc.stdout, url)
    assert list(open_store(url).list()) == []


def test_bench_table(s3_url: str) -> None:
    proc = bench("--quick", "--store", s3_url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"checkpoint data plane on {s3_url}"
    assert "save+upload MB/s" in lines[1] and "raw get MB/s" in lines[1]
    assert len(lines) == 4 and lines[3].split()[0] == "8.0"


@pytest.mark.parametrize("args, match", [(["--sizes-mb", "a,b"], "--sizes-mb"), (["--repeat", "0"], "--repeat")])
def test_bench_bad_arguments(tmp_path: Path, args: list[str], match: str) -> None:
    proc = bench("--store", f"file://{tmp_path}", *args)
    assert proc.returncode != 0
    assert match in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_unreachable_store_is_a_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = bench("--quick", "--store", f"s3://nowhere/x?endpoint=127.0.0.1:{port}&secure=false")
    assert proc.returncode != 0
    assert "cannot reach or create bucket 'nowhere'" in proc.stderr
    assert "Traceback" not in proc.stderr


def control_bench(redis_url: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "pbt_mq", "bench", "--control", "--quick", "--json", "--redis", redis_url],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_control_plane_bench_quick_reports_decisions(redis_url):
    rows = control_bench(redis_url)["control_plane"]
    assert rows[0]["population"] == 16 and rows[0]["decisions"] >= 200
    assert rows[0]["p50_ms"] > 0 and rows[0]["decisions_per_s"] > 0


def test_control_plane_bench_reports_replicas_and_redis_cpu(redis_url):
    reps = control_bench(redis_url)["replicas"]
    assert [x["replicas"] for x in reps] == [1, 2]
    assert all(x["decisions"] == x["population"] for x in reps), reps  # each backlog event decided once
    assert all(x["decisions_per_s"] > 0 and 0 <= x["redis_cpu"] for x in reps)


def test_fleet_bench_quick_runs_real_workers(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pbt_mq", "bench", "--fleet", "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["fleet"]
    assert [(x["workers"], x["population"]) for x in rows] == [(2, 2), (2, 4)]
    first = rows[0]
    assert first["segments"] >= 6 and 0 < first["user_fraction"] <= 1 and 0 <= first["warm_fraction"] <= 1
    assert first["segments_per_s"] > 0 and 4 <= rows[1]["segments"] <= 20  # an exploit skips ahead
    assert all(0 <= x["no_download_fraction"] <= 1 for x in rows)


def test_pbt_cost_bench_runs_pbt_local_both_ways(tmp_path):
    """``--pbt-cost FILE``: `pbt local FILE` as is and with exploit and explore off, each run's stats read back."""
    res = subprocess.run(
        [sys.executable, "-m", "pbt_mq", "bench", "--pbt-cost", "workers/toy.toml", "--quick", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)["pbt_cost"]
    fixed, pbt = out["arms"]
    assert (fixed["arm"], pbt["arm"], fixed["runs"], pbt["runs"]) == ("fixed population", "PBT", 1, 1)
    assert fixed["exploits"] == 0 < pbt["exploits"]  # the paper's two members: the worse one copies the better
    assert out["ratio"] == pbt["median_wall_s"] / fixed["median_wall_s"] > 0
    assert 0 <= pbt["no_download"] <= 1 and pbt["phases_s"]["build"] > 0
    bad = subprocess.run([sys.executable, "-m", "pbt_mq", "bench", "--pbt-cost", str(tmp_path / "nope.toml")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode != 0 and "no such experiment file" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_dashboard_quick_json(redis_url: str) -> None:
    """The machinery of `pbt bench --dashboard`: the pages were served frames while the arbiter decided."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn: pip install 'pbt-mq[dashboard]'")
    proc = bench("--dashboard", "--quick", "--json", "--redis", redis_url)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["dashboard"]
    assert [(r["population"], r["pages"]) for r in rows] == [(16, 0), (16, 2)]
    none, watched = rows
    assert none["frames_per_s"] is None and none["vs_none"] == 1.0
    assert watched["frames_per_s"] > 0 and 0 < watched["dashboard_cpu"] < 2
    for r in rows:
        assert r["decisions_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
