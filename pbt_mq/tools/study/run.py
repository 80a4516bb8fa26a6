"""``pbt study``: does PBT work here? Seven comparisons on the real system, one command.

1. The paper's toy (workers/toy.toml): PBT vs exploit-only vs explore-only vs neither.
2. Digits (workers/digits.toml): PBT vs random search at equal compute (the same initial
   population with exploit/explore off) vs the best random-search configuration trained
   alone, and PB2.
3. A non-stationary task (workers/nonstationary.toml, the best lr falls 10x halfway):
   PBT vs the best of a grid of fixed learning rates at equal compute, and PB2.
4. Asynchrony (workers/rising.toml, study.rising): compare = step, latest, synch.
5. Two objectives (workers/pareto.toml, study.pareto): multi-objective PBT vs PBT on a weighted sum and
   random search, by hypervolume.
6. Real training (``study.paired``): PPO (workers/cartpole.toml, run on Acrobot-v1: see
   ``study.rl``) and a character transformer language model (workers/charlm.toml), PBT vs
   random search at equal compute.
7. A deceptive schedule (workers/deceptive.toml, study.deceptive): greedy lr choices pay at once and
   cost later; vanilla PBT and its less greedy options against a known optimal schedule.

Every run is a real experiment on a real fleet (``tools.fleet.fleet``: a private
redis-server, one pbt-arbiter and N pbt-worker processes). Runs go one at a time, so every
arm gets the same warm workers; curves, schedules and compute are read back from each
experiment's lineage log. Output: ``DIR/results.md``, ``DIR/*.png``, ``DIR/runs.json``.
"""


from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pbt_mq.broker.connect import connect
from pbt_mq.core.model import ExperimentState
from pbt_mq.tools.fleet import fleet, on_pythonpath
from pbt_mq.tools.study import deceptive, rising
from pbt_mq.tools.study.deceptive import deceptive_study
from pbt_mq.tools.study.lm import CHARLM
from pbt_mq.tools.study.pareto import pareto_study
from pbt_mq.tools.study.report import write_report
from pbt_mq.tools.study.rising import rising_study
from pbt_mq.tools.study.rl import CARTPOLE
from pbt_mq.tools.study.tasks import EXAMPLES, FULL, QUICK, Fleet, digits_study, drift_study, toy_study

STUDIES = {"toy": toy_study, "digits": digits_study, "drift": drift_study, "rising": rising_study,
           "pareto": pareto_study, "deceptive": deceptive_study}

PAIRED = (CARTPOLE, CHARLM)  # PBT vs random search on real training (study.paired); they report themselves
ALL = {**STUDIES, **{task.name: task.run for task in PAIRED}}


def run(a: argparse.Namespace) -> int:
    chosen = [s.strip() for s in (a.only or ",".join(ALL)).split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(ALL))
    if unknown or not chosen:
        print(f"pbt study: error: --only: unknown study {(unknown or [''])[0]!r}", file=sys.stderr)
        return 2
    if not (EXAMPLES / "toy.toml").is_file():
        print(f"pbt study: error: it runs the example experiments of a checkout ({EXAMPLES} is missing): "
              "git clone the project and pip install -e . from it", file=sys.stderr)
        return 2
    # its workers import the examples' trainables (workers.x:Y) from the checkout, wherever it is run from
    on_pythonpath(EXAMPLES.parent)
    scale = QUICK if a.quick else FULL
    if a.seeds:
        scale = dataclasses.replace(scale, seeds=a.seeds, rising_seeds=a.seeds)
    if a.arms:
        wanted = tuple(x.strip() for x in a.arms if x.strip())
        armed = {"rising": rising.ARMS, "deceptive": deceptive.ARMS, **{task.name: task.arms for task in PAIRED}}
        known = {arm.label for arms in armed.values() for arm in arms}
        if not wanted or set(wanted) - known:
            print(f"pbt study: error: --arms: unknown arm {sorted(set(wanted) - known or {''})[0]!r}; "
                  f"known: {'; '.join(sorted(known))}", file=sys.stderr)
            return 2
        chosen = [n for n in chosen if n in armed and set(wanted) & {arm.label for arm in armed[n]}]
        if not chosen:
            print("pbt study: error: --arms: no chosen task has those arms", file=sys.stderr)
            return 2
        scale = dataclasses.replace(scale, arms=wanted)
    out = Path(a.out).resolve()
    wd = out / "work"
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with fleet(wd, a.workers, keep_events=True) as (url, procs):  # best_metrics, final_points read events
        f = Fleet(connect(url), procs, wd, a.timeout)
        for name in chosen:
            print(f"pbt study: {name}", flush=True)
            ALL[name](f, scale)
    elapsed = time.monotonic() - t0
    write_report(out, f.runs, command_line(a, chosen), elapsed, a.workers, quick=a.quick, extra=PAIRED)
    ok = all(r.state == ExperimentState.DONE for r in f.runs)
    shutil.rmtree(wd if ok else wd / "checkpoints", ignore_errors=True)  # logs stay when a run failed
    print(f"pbt study: {len(f.runs)} experiments in {elapsed:.0f} s; see {out / 'results.md'}")
    return 0 if ok else 1


def command_line(a: argparse.Namespace, chosen: Sequence[str]) -> str:
    """The command that reproduces this report, for its header."""
    parts = ["pbt study", "--quick" if a.quick else "", f"-o {a.out}",
             f"--only {','.join(chosen)}" if set(chosen) != set(ALL) else "",
             f"--seeds {a.seeds}" if a.seeds else "", " ".join(f"--arms '{x}'" for x in a.arms or ()), f"--workers {a.workers}" if a.workers != 2 else ""]
    return " ".join(p for p in parts if p)
