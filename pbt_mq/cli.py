"""Command line: ``pbt`` (launch, status, wait, stop, list, health, local, bench, top, plot, lineage, export,
replay), ``pbt-worker``, ``pbt-arbiter``.

Every option can also come from the environment (shown in ``--help``), so a
deployment configures processes with env vars alone. Errors print one line and
exit 2 (bad input) or 1 (a service or the run failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError
from .redisconn import DEFAULT_URL, RedisUnavailable, connect
from .store import StoreError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124


class UsageError(ValueError):
    pass


def env(name: str, default: Any = None) -> Any:
    return os.environ.get(name, default)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _redis_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis",
        default=env("PBT_REDIS_URL", DEFAULT_URL),
        help="Redis URL; redis://[user:pass@]host:port/db or rediss:// for TLS (env PBT_REDIS_URL)",
    )


def _log_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default=env("PBT_LOG_LEVEL", "INFO"), help="(env PBT_LOG_LEVEL)")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _guard(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    from .experiment import UnknownExperiment
    from .lineage import NoCheckpoint

    try:
        return fn(args)
    except (ConfigError, UsageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RedisUnavailable, StoreError, UnknownExperiment, NoCheckpoint) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pbt lineage EXP | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (RuntimeError, ImportError, OSError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAIL


# ---------------------------------------------------------------- pbt


def cmd_launch(a: argparse.Namespace) -> int:
    from .config import load_file
    from .experiment import launch
    from .store import open_store

    cfg = load_file(a.file, a.set)
    store_url = resolve_store_url(a.store or env("PBT_STORE_URL") or cfg.store, Path(a.file).parent)
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
    from .experiment import status

    st = status(connect(a.redis), a.experiment)
    if a.json:
        print(json.dumps(st, indent=2))
    else:
        print(format_status(st))
    return EXIT_OK


def format_status(st: dict[str, Any]) -> str:
    lines = [f"{st['experiment']}  state={st['state']}  finished={st['finished']}/{st['population']}"]
    if st.get("reason"):
        lines[0] += f"  ({st['reason']})"
    best = st.get("best")
    if best:
        lines.append(f"best: {best['member']} {st['metric']}={best['score']:.6g} at step {best['step']}")
    lines.append(f"{'member':<8} {'state':<8} {'step':>7} {st['metric']:>12}  {'worker':<24} hparams")
    for m in st["members"]:
        score = "-" if m["score"] is None else f"{m['score']:.6g}"
        hp = " ".join(f"{k}={_short(v)}" for k, v in sorted(m["hparams"].items()))
        lines.append(f"{m['id']:<8} {m['state']:<8} {m['step']:>7} {score:>12}  {m['worker'][:24]:<24} {hp}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_wait(a: argparse.Namespace) -> int:
    from .experiment import DONE, TERMINAL, status

    r = connect(a.redis)
    deadline = None if a.timeout is None else time.monotonic() + a.timeout
    while True:
        st = status(r, a.experiment)
        if st["state"] in TERMINAL:
            print(format_status(st))
            return EXIT_OK if st["state"] == DONE else EXIT_FAIL
        if deadline is not None and time.monotonic() >= deadline:
            print(f"pbt wait: timed out after {a.timeout} s; {a.experiment} is {st['state']}", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(a.poll_s)


def cmd_stop(a: argparse.Namespace) -> int:
    from .experiment import stop

    changed = stop(connect(a.redis), a.experiment)
    print(f"{a.experiment}: {'stopped' if changed else 'already finished'}")
    return EXIT_OK


def cmd_stats(a: argparse.Namespace) -> int:
    from .stats import experiment_stats, format_stats

    st = experiment_stats(connect(a.redis), a.experiment)
    print(json.dumps(st, indent=2) if a.json else format_stats(a.experiment, st))
    return EXIT_OK


def cmd_list(a: argparse.Namespace) -> int:
    from .keys import EXPERIMENTS, Keys

    r = connect(a.redis)
    for e in r.zrange(EXPERIMENTS, 0, -1):
        state = r.hget(Keys(e.decode()).meta, "state")
        print(f"{e.decode()}  {(state or b'?').decode()}")
    return EXIT_OK


def cmd_health(a: argparse.Namespace) -> int:
    """For probes: 0 if Redis answers and, with --worker, that worker's heartbeat is fresh; else 1."""
    import redis

    from .keys import worker_key

    wid = None if a.worker is None else (a.worker or env("PBT_WORKER_ID"))
    if a.worker is not None and not wid:
        raise UsageError("--worker: give an ID or set PBT_WORKER_ID")
    r = connect(a.redis, retries=1)
    if wid is None:
        print("ok: Redis answers")
        return EXIT_OK
    try:
        beat = r.hget(worker_key(wid), "beat_ms")
    except redis.RedisError as exc:
        raise RedisUnavailable(f"Redis: {exc}") from None
    if beat is None:
        print(f"pbt health: worker {wid}: no heartbeat ({worker_key(wid)} is missing)", file=sys.stderr)
        return EXIT_FAIL
    age_s = time.time() - int(beat) / 1000
    if age_s > a.max_age_s:
        print(f"pbt health: worker {wid}: last heartbeat {age_s:.1f} s ago (> {a.max_age_s:g} s)", file=sys.stderr)
        return EXIT_FAIL
    print(f"ok: worker {wid} beat {age_s:.1f} s ago")
    return EXIT_OK


def cmd_local(a: argparse.Namespace) -> int:
    from .local import run_local

    return run_local(
        a.file,
        workers=a.workers,
        overrides=a.set,
        workdir=a.dir,
        timeout_s=a.timeout,
        live=not a.quiet,
    )


def build_pbt_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pbt", description="Population Based Training over Redis and S3.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("launch", help="create an experiment and queue its first segments")
    s.add_argument("file", help="experiment TOML file")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value, e.g. population.size=16")
    s.add_argument("--store", default=None, help="checkpoint store URL (env PBT_STORE_URL; else the file's store)")
    _redis_opt(s)
    s.set_defaults(fn=cmd_launch)

    s = sub.add_parser("status", help="show an experiment's members")
    s.add_argument("experiment")
    s.add_argument("--json", action="store_true")
    _redis_opt(s)
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("wait", help="block until an experiment ends (exit 0 done, 1 failed/stopped, 124 timeout)")
    s.add_argument("experiment")
    s.add_argument("--timeout", type=float, default=None, help="seconds")
    s.add_argument("--poll-s", type=float, default=0.5)
    _redis_opt(s)
    s.set_defaults(fn=cmd_wait)

    s = sub.add_parser("stop", help="stop an experiment: no further segments are queued")
    s.add_argument("experiment")
    _redis_opt(s)
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("stats", help="timings: decisions/s, ready-to-start latency, warm starts, time in training")
    s.add_argument("experiment")
    s.add_argument("--json", action="store_true")
    _redis_opt(s)
    s.set_defaults(fn=cmd_stats)

    s = sub.add_parser("list", help="list experiments")
    _redis_opt(s)
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("health", help="for probes: exit 0 if Redis answers (and --worker's heartbeat is fresh), else 1")
    s.add_argument("--worker", nargs="?", const="", default=None, metavar="ID",
                   help="also require this worker's heartbeat (no ID: env PBT_WORKER_ID)")
    s.add_argument("--max-age-s", type=float, default=3 * float(env("PBT_HEARTBEAT_S", "2")),
                   help="oldest acceptable heartbeat (default three beats of env PBT_HEARTBEAT_S)")
    _redis_opt(s)
    s.set_defaults(fn=cmd_health)

    s = sub.add_parser("local", help="run an experiment on this machine: private Redis, local store, arbiter, workers")
    s.add_argument("file")
    s.add_argument("--workers", type=int, default=int(env("PBT_LOCAL_WORKERS", "2")), help="(env PBT_LOCAL_WORKERS)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--dir", default=env("PBT_LOCAL_DIR", ".pbt-local"), help="work directory (env PBT_LOCAL_DIR)")
    s.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    s.add_argument("--quiet", action="store_true", help="no live table, only the summary")
    s.set_defaults(fn=cmd_local)

    from . import export, plot, top  # inspection and take-away: each module adds its own arguments

    top.add_arguments(sub.add_parser("top", help="live view: members, trends, last exploits, workers, events/s"))
    plot.add_arguments(sub.add_parser("plot", help="PNG report: score curves with exploits, schedules, lineage tree"))
    export.add_lineage_arguments(sub.add_parser("lineage", help="a member's ancestry and hyperparameter schedule"))
    export.add_export_arguments(sub.add_parser("export", help="the best checkpoint, its schedule and experiment file"))
    export.add_replay_arguments(sub.add_parser("replay", help="train one member along an exported schedule"))

    s = sub.add_parser("bench", help="measure the checkpoint data plane (and more, see --help)")
    from .bench import add_arguments

    add_arguments(s)

    from .study import add_arguments as add_study_arguments

    add_study_arguments(sub.add_parser("study", help="does PBT work here? the paper's toy, PBT vs random search, PB2"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_pbt_parser().parse_args(argv)
    _setup_logging(env("PBT_LOG_LEVEL", "WARNING"))
    return _guard(a.fn, a, "pbt")


# ---------------------------------------------------------------- pbt-worker / pbt-arbiter


def build_worker_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pbt-worker", description="Run PBT segments from the queue (one per GPU).")
    _redis_opt(p)
    p.add_argument("--queue", default=env("PBT_QUEUE", "pbt"), help="(env PBT_QUEUE)")
    p.add_argument("--device", default=env("PBT_DEVICE", "cpu"), help="torch device, e.g. cuda:0 (env PBT_DEVICE)")
    p.add_argument("--id", default=env("PBT_WORKER_ID"), help="worker id (env PBT_WORKER_ID; default host-pid-device)")
    p.add_argument("--heartbeat-s", type=float, default=float(env("PBT_HEARTBEAT_S", "2")), help="(env PBT_HEARTBEAT_S)")
    p.add_argument("--threads", type=int, default=int(env("PBT_TORCH_THREADS", "0")),
                   help="torch intra-op threads; 0 keeps torch's default (env PBT_TORCH_THREADS)")
    p.add_argument("--live-models", type=int, choices=(0, 1), default=int(env("PBT_LIVE_MODELS", "1")),
                   help="keep the last trained model live for a warm next segment (1) or not (0) (env PBT_LIVE_MODELS)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-jobs", type=int, default=None)
    _metrics_opt(p)
    p.add_argument("--tensorboard-dir", default=env("PBT_TENSORBOARD_DIR"),
                   help="write per-member scalars for TensorBoard under DIR/EXP/MEMBER (env PBT_TENSORBOARD_DIR)")
    _log_opt(p)
    return p


def _metrics_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=int(env("PBT_METRICS_PORT", "0")),
                   help="serve Prometheus metrics on this port; 0 = off (env PBT_METRICS_PORT)")
    p.add_argument("--metrics-addr", default=env("PBT_METRICS_ADDR", "0.0.0.0"), help="(env PBT_METRICS_ADDR)")


def worker_main(argv: Sequence[str] | None = None) -> int:
    a = build_worker_parser().parse_args(argv)
    _setup_logging(a.log_level)

    def go(a: argparse.Namespace) -> int:
        from .worker import serve

        if a.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise UsageError(f"--device {a.device}: CUDA is not available on this node")
        if a.threads > 0:
            import torch

            torch.set_num_threads(a.threads)
        r = connect(a.redis)
        if a.metrics_port or a.tensorboard_dir:
            from . import metrics

            metrics.start(r, "worker", a.metrics_port, a.metrics_addr, (a.queue,), a.tensorboard_dir)
        serve(r, a.queue, a.device, a.id, a.burst, a.heartbeat_s, a.max_jobs, a.live_models)
        return EXIT_OK

    return _guard(go, a, "pbt-worker")


def build_arbiter_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pbt-arbiter", description="Apply the PBT rules to ready events (run one or more).")
    _redis_opt(p)
    p.add_argument("--name", default=env("PBT_ARBITER_NAME"), help="consumer name (env PBT_ARBITER_NAME; default host-pid)")
    p.add_argument("--claim-idle-ms", type=int, default=int(env("PBT_CLAIM_IDLE_MS", "30000")),
                   help="reclaim events another arbiter left unacknowledged this long (env PBT_CLAIM_IDLE_MS)")
    p.add_argument("--block-ms", type=int, default=int(env("PBT_BLOCK_MS", "1000")), help="(env PBT_BLOCK_MS)")
    p.add_argument("--reap-grace-ms", type=int, default=int(env("PBT_REAP_GRACE_MS", "10000")),
                   help="requeue a segment whose job left the queue but never started after this long (env PBT_REAP_GRACE_MS)")
    p.add_argument("--reap-interval-ms", type=int, default=int(env("PBT_REAP_INTERVAL_MS", "2000")),
                   help="how often to look for segments of dead workers; 0 turns the reaper off (env PBT_REAP_INTERVAL_MS)")
    p.add_argument("--events-retention-s", type=float, default=float(env("PBT_EVENTS_RETENTION_S", "3600")),
                   help="trim decided events older than this from each events stream; < 0 keeps all"
                        " (env PBT_EVENTS_RETENTION_S; the lineage stream is never trimmed)")
    p.add_argument("--burst", action="store_true", help="exit when no events are waiting")
    _metrics_opt(p)
    _log_opt(p)
    return p


def arbiter_main(argv: Sequence[str] | None = None) -> int:
    a = build_arbiter_parser().parse_args(argv)
    _setup_logging(a.log_level)

    def go(a: argparse.Namespace) -> int:
        from .arbiter import Arbiter

        r = connect(a.redis)
        if a.metrics_port:
            from . import metrics

            metrics.start(r, "arbiter", a.metrics_port, a.metrics_addr)
        arb = Arbiter(
            r, a.name, block_ms=a.block_ms, claim_idle_ms=a.claim_idle_ms,
            reap_interval_s=a.reap_interval_ms / 1000, reap_grace_ms=a.reap_grace_ms,
            events_retention_s=a.events_retention_s,
        )

        def on_term(signum: int, frame: Any) -> None:
            arb.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        arb.run(burst=a.burst)
        return EXIT_OK

    return _guard(go, a, "pbt-arbiter")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
