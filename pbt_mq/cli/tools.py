"""``pbt local | bench | study``: whole-fleet tools on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from pbt_mq.cli.options import UsageError, env_option
from pbt_mq.tools.bench import run as bench_run
from pbt_mq.tools.local import ALL, run_local
from pbt_mq.tools.study import run as study_run


def cmd_local(a: argparse.Namespace) -> int:
    if a.resume is None and not a.file:
        raise UsageError("give an experiment FILE to run, or --resume to continue what is unfinished in --dir")
    if a.resume is not None and (a.file or a.set):
        raise UsageError("--resume continues the experiments already in --dir: give no FILE and no --set")
    return run_local(a.file, workers=a.workers, overrides=a.set, workdir=a.dir, timeout_s=a.timeout,
                     live=not a.quiet, resume=a.resume)


def add_local_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("file", nargs="?", help="experiment TOML file (not with --resume)")
    s.add_argument("--resume", nargs="?", const=ALL, default=None, metavar="EXP",
                   help="continue the unfinished experiments of --dir (interrupted or paused), or only EXP")
    env_option(s, "--workers", env="PBT_LOCAL_WORKERS", help="pbt-worker processes", type=int)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    env_option(s, "--dir", env="PBT_LOCAL_DIR", help="work directory")
    s.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    s.add_argument("--quiet", action="store_true", help="no live table, only the summary")
    s.set_defaults(fn=cmd_local)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    env_option(p, "--store", env="PBT_STORE_URL", help="store URL (unset: a temp dir)")
    p.add_argument("--sizes-mb", default="50,500", help="comma-separated state-dict sizes in MB")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs per figure (data: the median is reported; dashboard: rounds, the mean)")
    p.add_argument("--quick", action="store_true", help="small and fast: 8 MB, 1 run (a CI smoke test)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--data", action="store_true", help="the checkpoint data plane (the default when no part is named)")
    p.add_argument("--control", action="store_true",
                   help="the arbiter: decisions/s and latency per population, and 1/2/4 replicas with Redis CPU")
    p.add_argument("--fleet", action="store_true",
                   help="real workers: time in user code, warm segments, bytes per exploit, segments/s")
    p.add_argument("--dashboard", action="store_true",
                   help="what watching costs: --control's figures with no page and with --clients pages of one"
                        " `pbt dashboard` open (needs the dashboard extra)")
    p.add_argument("--pbt-cost", metavar="FILE", default=None,
                   help="what PBT costs in wall time: `pbt local FILE` end to end, as is and with exploit and explore"
                        " off, alternating (--repeat runs each, --workers workers)")
    p.add_argument("--clients", type=int, default=4, help="with --dashboard: open pages (default 4)")
    p.add_argument("--all", action="store_true", help="data, control and fleet")
    p.add_argument("--populations", default="16,256,4096", help="with --control or --dashboard: population sizes")
    p.add_argument("--replicas", default="1,2,4", help="with --control: arbiter replica counts")
    p.add_argument("--workers", type=int, default=2, help="with --fleet or --pbt-cost: pbt-worker processes (default 2)")
    p.add_argument("--model-mb", type=float, default=50.0, help="with --fleet: the model's state size")
    p.add_argument("--redis", default=None,
                   help="with --control: a Redis it may write bench experiments to (env PBT_REDIS_URL if set;"
                        " else a private redis-server)")
    p.set_defaults(fn=bench_run.run)


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="study", help="output directory (results.md, PNGs, runs.json)")
    p.add_argument("--quick", action="store_true", help="small and fast: a CI smoke test, not evidence")
    p.add_argument("--workers", type=int, default=2, help="pbt-worker processes (default 2)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per arm for every task but the toy (default 5, rising 12; quick 1)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(study_run.ALL)} (default: all)")
    p.add_argument("--arms", action="append", default=None, metavar="LABEL",
                   help="run only this arm, e.g. PB2 or 'PBT, ttest' (repeat for more); each task's baselines always "
                        "run (random search, vanilla PBT or the fixed population) and tasks without it are skipped")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on one experiment after this many seconds")
    p.set_defaults(fn=study_run.run)


def register(sub: Any) -> None:
    add_local_arguments(sub.add_parser(
        "local", help="run an experiment on this machine: private Redis, local store, arbiter, workers"))
    add_bench_arguments(sub.add_parser("bench", help="measure the checkpoint data plane (and more, see --help)"))
    add_study_arguments(sub.add_parser(
        "study", help="does PBT work here? the paper's toy, PBT vs random search, PB2"))
