"""``pbt bench --pbt-cost FILE``: what PBT costs in wall time over the same population with exploit
and explore off, as a user meets it: ``pbt local FILE`` end to end (redis-server, arbiter and
workers started, every member trained, the report written), each run in a fresh work dir.

The two arms alternate (fixed, PBT, fixed, PBT, ...) so a machine whose speed drifts weighs on
both; the figure is the ratio of median wall times. Each run's own ``pbt stats`` says where its
segments started (warm, cached, cold, fresh) and how long building, loading and training took.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

FIXED = ("--set", "exploit.rule=none", "--set", "explore.rule=none")
ARMS = (("fixed population", FIXED), ("PBT", ()))


class BenchFailed(RuntimeError):
    """A ``pbt local`` run of the bench did not finish; the text has its last output."""


def _pbt(*args: str, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pbt_mq", *args], capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def run_once(file: str, workers: int, sets: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
    """One ``pbt local`` run: its wall time and its ``pbt stats``."""
    with tempfile.TemporaryDirectory(prefix="pbt-bench-cost-") as wd:
        t0 = time.perf_counter()
        res = _pbt("local", file, "--workers", str(workers), "--quiet", "--dir", wd, *sets, timeout_s=timeout_s)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise BenchFailed(f"pbt local {file} {' '.join(sets)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
        listed = _pbt("list", "--local", wd, timeout_s=60).stdout.split()
        if not listed:
            raise BenchFailed(f"pbt local {file}: no experiment in its work dir")
        stats = json.loads(_pbt("stats", listed[0], "--json", "--local", wd, timeout_s=60).stdout)
    return {"wall_s": wall, "stats": stats}


def measure_pbt_cost(file: str, workers: int, repeat: int, timeout_s: float = 1800) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in ARMS}
    for _ in range(repeat):
        for name, sets in ARMS:
            runs[name].append(run_once(file, workers, sets, timeout_s))
    rows = []
    for name, _ in ARMS:
        rs = runs[name]
        shares = [r["stats"]["no_download_fraction"] for r in rs if r["stats"].get("no_download_fraction") is not None]
        phases = {p: statistics.median(r["stats"]["phases_s"].get(p, 0.0) for r in rs)
                  for p in rs[0]["stats"]["phases_s"]}
        rows.append({"arm": name, "runs": len(rs), "wall_s": [round(r["wall_s"], 2) for r in rs],
                     "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                     "no_download": min(shares) if shares else None,
                     "exploits": statistics.median(r["stats"]["actions"].get("exploit", 0) for r in rs),
                     "phases_s": phases})
    fixed, pbt = rows
    return {"file": file, "workers": workers, "repeat": repeat, "arms": rows,
            "ratio": pbt["median_wall_s"] / fixed["median_wall_s"]}


def format_pbt_cost(out: dict[str, Any]) -> str:
    runs = f"{out['repeat']} run{'s' if out['repeat'] != 1 else ''}"
    text = (f"what PBT costs: `pbt local {out['file']} --workers {out['workers']}` end to end, {runs} per arm,"
            " alternating\n")
    text += (f"{'arm':>16} | {'median wall s':>13} | {'runs (s)':>30} | {'exploits':>8} | {'no download (worst run)':>23} |"
             " segment phases, median of runs (s)\n")
    text += "-" * 140 + "\n"
    for r in out["arms"]:
        share = "-" if r["no_download"] is None else f"{r['no_download']:.0%}"
        phases = "  ".join(f"{p} {v:.2f}" for p, v in r["phases_s"].items())
        runs = " ".join(f"{x:.1f}" for x in r["wall_s"])
        text += (f"{r['arm']:>16} | {r['median_wall_s']:>13.2f} | {runs:>30} | {r['exploits']:>8g} | {share:>23} | "
                 f"{phases}\n")
    text += f"PBT / fixed population, median wall time: {out['ratio']:.3f}\n"
    return text
