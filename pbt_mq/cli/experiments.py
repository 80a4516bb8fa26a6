"""``pbt launch | status | wait | stop | list | stats | health``: an experiment's life from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

from pbt_mq.broker.connect import RedisUnavailable, connect
from pbt_mq.cli.options import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_TIMEOUT,
    UsageError,
    env_option,
    redis_option,
    state_options,
)
from pbt_mq.config.parse import load_file
from pbt_mq.core import settings
from pbt_mq.core.keys import worker_key
from pbt_mq.core.model import Action, ExperimentState, Heartbeat
from pbt_mq.observe.lineage import record_json
from pbt_mq.observe.stats import experiment_stats, format_stats
from pbt_mq.observe.status import experiment_rows, format_member, format_status
from pbt_mq.state.experiment import launch, status, stop
from pbt_mq.state.lineage import records
from pbt_mq.store.open import open_store
from pbt_mq.tools.workdir import saved_copy_of


def cmd_launch(a: argparse.Namespace) -> int:
    cfg = load_file(a.file, a.set)
    store_url = resolve_store_url(a.store or cfg.store, Path(a.file).parent)
    open_store(store_url).check()
    r = connect(a.redis)
    exp = launch(r, cfg, store_url)
    print(f"launched {cfg.population} members of {cfg.name}; store {store_url}", file=sys.stderr)
    print(exp)
    return EXIT_OK


def resolve_store_url(url: str | None, base: Path) -> str:
    """A relative ``file://`` path is taken from the experiment file's directory."""
    if not url:
        raise UsageError("no checkpoint store: pass --store URL, set PBT_STORE_URL, or set store = '...' in the file")
    if url.startswith("s3://"):
        return url
    path = url[len("file://") :] if url.startswith("file://") else url
    if "://" in path:
        raise UsageError(f"--store {url}: scheme must be file:// or s3://")
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base / p).resolve()
    return f"file://{p}"


def cmd_status(a: argparse.Namespace) -> int:
    r = connect(a.redis)
    st = status(r, a.experiment)
    if a.member is None:
        print(json.dumps(st, indent=2) if a.json else format_status(st))
        return EXIT_OK
    if a.member not in {m["id"] for m in st["members"]}:
        raise UsageError(f"{a.experiment} has no member {a.member!r}; its members: {st['members'][0]['id']} .. "
                         f"{st['members'][-1]['id']}" if st["members"] else f"{a.experiment} has no members")
    failures = [rec for rec in records(r, a.experiment)
                if rec.member == a.member and rec.action in (Action.FAILED, Action.REPLACED)]
    if a.json:
        row = next(m for m in st["members"] if m["id"] == a.member)
        print(json.dumps({**row, "failures": [record_json(rec) for rec in failures]}, indent=2))
    else:
        print(format_member(st, a.member, failures))
    return EXIT_OK


def cmd_wait(a: argparse.Namespace) -> int:
    r = connect(a.redis)
    saved = saved_copy_of(a.redis)
    st = status(r, a.experiment)
    if saved is not None and not ExperimentState(st["state"]).ended:
        raise UsageError(f"{a.experiment} is {st['state']} in the saved state of {saved}, and pbt local is not"
                         f" running there, so it will not end: resume it with `pbt local --resume --dir {saved}`"
                         " in another shell, then wait")
    deadline = None if a.timeout is None else time.monotonic() + a.timeout
    while True:
        st = status(r, a.experiment)
        if ExperimentState(st["state"]).ended:
            print(format_status(st))
            return EXIT_OK if st["state"] == ExperimentState.DONE else EXIT_FAIL
        if deadline is not None and time.monotonic() >= deadline:
            print(f"pbt wait: timed out after {a.timeout} s; {a.experiment} is {st['state']}", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(a.poll_s)


def cmd_stop(a: argparse.Namespace) -> int:
    changed = stop(connect(a.redis), a.experiment)
    print(f"{a.experiment}: {'stopped' if changed else 'already finished'}")
    return EXIT_OK


def cmd_stats(a: argparse.Namespace) -> int:
    st = experiment_stats(connect(a.redis), a.experiment)
    print(json.dumps(st, indent=2) if a.json else format_stats(a.experiment, st))
    return EXIT_OK


def cmd_list(a: argparse.Namespace) -> int:
    """``ID  STATE`` first (scripts read that), then the best score and, for a stopped one, why."""
    for row in experiment_rows(connect(a.redis)):
        best = (f"best {row['metric']}={row['score']:.6g} ({row['member']}, step {row['step']})"
                if row["member"] else "no score yet")
        if row.get("multi") and row["member"]:  # several metrics: a front, not one best (pbt status shows it)
            best = f"several metrics; on the first, best {best[5:]}"
        why = f"  {row['reason']}" if row["state"] in ("stopped", "failed", "?") and row["reason"] else ""
        print(f"{row['id']}  {row['state']}  {best}{why}")
    return EXIT_OK


def cmd_health(a: argparse.Namespace) -> int:
    """For probes: 0 if Redis answers and, with --worker, that worker's heartbeat is fresh; else 1."""
    wid = None if a.worker is None else (a.worker or settings.read("PBT_WORKER_ID"))
    if a.worker is not None and not wid:
        raise UsageError("--worker: give an ID or set PBT_WORKER_ID")
    r = connect(a.redis, retries=1)
    if wid is None:
        print("ok: Redis answers")
        return EXIT_OK
    try:
        beat = Heartbeat.read(r, worker_key(wid), "beat_ms").beat_ms
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis: {exc}") from None
    if beat is None:
        print(f"pbt health: worker {wid}: no heartbeat ({worker_key(wid)} is missing)", file=sys.stderr)
        return EXIT_FAIL
    max_age_s = a.max_age_s if a.max_age_s is not None else 3 * settings.read("PBT_HEARTBEAT_S")
    age_s = time.time() - beat / 1000
    if age_s > max_age_s:
        print(f"pbt health: worker {wid}: last heartbeat {age_s:.1f} s ago (> {max_age_s:g} s)", file=sys.stderr)
        return EXIT_FAIL
    print(f"ok: worker {wid} beat {age_s:.1f} s ago")
    return EXIT_OK


def register(sub: Any) -> None:
    s = sub.add_parser("launch", help="create an experiment and queue its first segments")
    s.add_argument("file", help="experiment TOML file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. population.size=16")
    env_option(s, "--store", env="PBT_STORE_URL", help="checkpoint store URL (else the file's store)")
    redis_option(s)
    s.set_defaults(fn=cmd_launch)

    s = sub.add_parser("status", help="show an experiment's members (or one member, with its failures' tracebacks)")
    s.add_argument("experiment")
    s.add_argument("member", nargs="?", default=None, help="one member: its state and every failure, traceback included")
    s.add_argument("--json", action="store_true")
    state_options(s)
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("wait", help="block until an experiment ends (exit 0 done, 1 failed/stopped, 124 timeout)")
    s.add_argument("experiment")
    s.add_argument("--timeout", type=float, default=None, help="seconds")
    s.add_argument("--poll-s", type=float, default=0.5)
    state_options(s)
    s.set_defaults(fn=cmd_wait)

    s = sub.add_parser("stop", help="stop an experiment: no further segments are queued")
    s.add_argument("experiment")
    redis_option(s)
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("stats", help="timings: decisions/s, ready-to-start latency, warm starts, time in training")
    s.add_argument("experiment")
    s.add_argument("--json", action="store_true")
    state_options(s)
    s.set_defaults(fn=cmd_stats)

    s = sub.add_parser("list", help="list experiments")
    state_options(s)
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("health", help="for probes: exit 0 if Redis answers (and --worker's heartbeat is fresh), else 1")
    s.add_argument("--worker", nargs="?", const="", default=None, metavar="ID",
                   help="also require this worker's heartbeat (no ID: env PBT_WORKER_ID)")
    s.add_argument("--max-age-s", type=float, default=None,
                   help="oldest acceptable heartbeat (default three beats of env PBT_HEARTBEAT_S)")
    redis_option(s)
    s.set_defaults(fn=cmd_health)
