"""``pbt-worker`` (one per GPU) and ``pbt-arbiter`` (any number of replicas): their options and start-up."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

from pbt_mq.broker.connect import connect
from pbt_mq.cli.options import EXIT_OK, Parser, UsageError, env_option, log_option, redis_option, run
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.core import settings
from pbt_mq.core.hooks import Hooks
from pbt_mq.integrations.trackers import BACKENDS  # factories only: no tracker library is imported here
from pbt_mq.observe.metrics import PrometheusHook, TensorBoardHook
from pbt_mq.rules.plugins import allow_plugins
from pbt_mq.worker.serve import default_worker_id, serve
from pbt_mq.worker.stopping import StopPolicy
from pbt_mq.worker.tracking import TrackingHook

ARBITER_GRACE_S = 1.0


def _metrics_options(p: argparse.ArgumentParser) -> None:
    env_option(p, "--metrics-port", env="PBT_METRICS_PORT", help="serve Prometheus metrics on this port; 0 = off",
               type=int)
    env_option(p, "--metrics-addr", env="PBT_METRICS_ADDR", help="the address /metrics listens on")


def build_worker_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pbt-worker", description="Run PBT segments from the queue (one per GPU).",
               epilog="PBT_TRAINABLES=workers,mypkg limits the modules this worker imports trainables from.")
    redis_option(p)
    env_option(p, "--queue", env="PBT_QUEUE", help="the RQ queue to serve")
    env_option(p, "--device", env="PBT_DEVICE", help="torch device, e.g. cuda:0")
    env_option(p, "--id", env="PBT_WORKER_ID", help="worker id (unset: host-pid-device)")
    env_option(p, "--heartbeat-s", env="PBT_HEARTBEAT_S", help="heartbeat period", type=float)
    env_option(p, "--threads", env="PBT_TORCH_THREADS", help="torch intra-op threads; 0 keeps torch's default",
               type=int)
    env_option(p, "--live-models", env="PBT_LIVE_MODELS", type=int, choices=(0, 1),
               help="keep the last trained model live for a warm next segment (1) or not (0)")
    env_option(p, "--cache-mb", env="PBT_CACHE_MB", type=int, metavar="MB",
               help="host memory for checkpoints this worker wrote, so segments starting from them need no"
                    " download; 0 = off (unset: min(4096, the host's memory / 8))")
    env_option(p, "--affinity-wait-ms", env="PBT_AFFINITY_WAIT_MS", type=int, metavar="MS",
               help="take queued segments whose start checkpoint this worker holds first, passing others over for at"
                    " most this long; 0 = plain first-in, first-out")
    env_option(p, "--grace-s", env="PBT_GRACE_S", type=float,
               help="on SIGTERM/SIGINT/SIGUSR1: finish the segment in flight within this long, else abandon it to the"
                    " reaper; set it below your orchestrator's kill timeout")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-jobs", type=int, default=None)
    _metrics_options(p)
    env_option(p, "--tensorboard-dir", env="PBT_TENSORBOARD_DIR",
               help="write per-member scalars for TensorBoard under DIR/EXP/MEMBER")
    log_option(p)
    return p


def _torch() -> Any:
    """torch, which workers need and nothing else in pbt-mq imports at start-up."""
    return importlib.import_module("torch")


def run_worker(a: argparse.Namespace) -> int:
    if a.device.startswith("cuda") and not _torch().cuda.is_available():
        raise UsageError(f"--device {a.device}: CUDA is not available on this node")
    if a.threads > 0:
        _torch().set_num_threads(a.threads)
    r = connect(a.redis)
    hooks = Hooks()
    if a.metrics_port:
        hooks.add(PrometheusHook(r, "worker", a.metrics_port, a.metrics_addr, (a.queue,)))
    if a.tensorboard_dir:
        hooks.add(TensorBoardHook(a.tensorboard_dir))
    # idle unless an experiment has [tracking]; the backends are built by name only when one asks
    tracking = TrackingHook(r, a.id or default_worker_id(a.device), BACKENDS)
    hooks.add(tracking)
    try:
        serve(r, a.queue, a.device, a.id, a.burst, a.heartbeat_s, a.max_jobs, a.live_models, hooks, a.grace_s,
              cache_mb=a.cache_mb, affinity_wait_ms=a.affinity_wait_ms)
    finally:
        tracking.close()
    return EXIT_OK


def worker_main(argv: Sequence[str] | None = None) -> int:
    return run(build_worker_parser(), argv, "INFO", run_worker)


def build_arbiter_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pbt-arbiter", description="Apply the PBT rules to ready events (run one or more).")
    redis_option(p)
    env_option(p, "--name", env="PBT_ARBITER_NAME", help="consumer name (unset: host-pid)")
    env_option(p, "--claim-idle-ms", env="PBT_CLAIM_IDLE_MS", type=int,
               help="reclaim events another arbiter left unacknowledged this long")
    env_option(p, "--block-ms", env="PBT_BLOCK_MS", type=int, help="how long a read blocks")
    env_option(p, "--reap-grace-ms", env="PBT_REAP_GRACE_MS", type=int,
               help="requeue a segment whose job left the queue but never started after this long")
    env_option(p, "--reap-interval-ms", env="PBT_REAP_INTERVAL_MS", type=int,
               help="how often to look for segments of dead workers; 0 turns the reaper off")
    env_option(p, "--events-retention-s", env="PBT_EVENTS_RETENTION_S", type=float,
               help="trim decided events older than this from each events stream; < 0 keeps all"
                    " (the lineage stream is never trimmed)")
    env_option(p, "--plugins", env="PBT_PLUGINS", type=settings.modules, metavar="MOD1,MOD2",
               help="modules this arbiter may import plug-in rules from (exploit.rule / explore.rule ="
                    " 'module:callable'); an experiment naming another module is left to other arbiters")
    p.add_argument("--burst", action="store_true", help="exit when no events are waiting")
    _metrics_options(p)
    log_option(p)
    return p


def run_arbiter(a: argparse.Namespace) -> int:
    allow_plugins(a.plugins or ())  # this flag (or PBT_PLUGINS), and nothing else
    r = connect(a.redis)
    hooks = Hooks()
    if a.metrics_port:
        hooks.add(PrometheusHook(r, "arbiter", a.metrics_port, a.metrics_addr))
    arb = Arbiter(r, a.name, block_ms=a.block_ms, claim_idle_ms=a.claim_idle_ms,
                  reap_interval_s=a.reap_interval_ms / 1000, reap_grace_ms=a.reap_grace_ms,
                  events_retention_s=a.events_retention_s, hooks=hooks)

    # Decisions are transactions: an arbiter stopped mid-way leaves its events pending for the others.
    # So it stops at once, and if Redis is down (its client retrying with backoff) the watchdog ends it.
    stop = StopPolicy(ARBITER_GRACE_S, lambda: "")
    stop.install()
    arb.halt = stop.event
    arb.run(burst=a.burst)
    stop.finished()
    return EXIT_OK


def arbiter_main(argv: Sequence[str] | None = None) -> int:
    return run(build_arbiter_parser(), argv, "INFO", run_arbiter)
