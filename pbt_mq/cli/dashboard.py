"""``pbt dashboard``: the population in a browser, read-only, from the Redis the fleet shares.

starlette and uvicorn (the ``dashboard`` extra) are imported by this command only, when it
runs, so every other command works without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pbt_mq.broker.connect import connect, redact
from pbt_mq.cli.options import UsageError, env_option, log_option, redis_option
from pbt_mq.dashboard.auth import token_problem

DEFAULT_PORT = 8265


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text}: expected a port number in 0..65535 (0: any free port)")
    return value


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    redis_option(source)  # type: ignore[arg-type]
    source.add_argument("--local", metavar="DIR", default=None,
                        help="the Redis of a `pbt local` work directory instead of --redis")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1); anything but loopback requires a token")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    env_option(p, "--token", env="PBT_DASHBOARD_TOKEN",
               help="require 'Authorization: Bearer TOKEN' (or ?token=TOKEN once, kept in a cookie)")
    p.add_argument("--stale-s", type=float, default=6.0,
                   help="flag a worker whose last heartbeat is older than this (pbt-worker's TTL is 3 beats: 6 s)")
    log_option(p)
    p.set_defaults(fn=cmd_dashboard)


def redis_url(a: argparse.Namespace) -> str:
    """Where the dashboard's Redis is: --redis / PBT_REDIS_URL, or --local DIR.

    The one place this is decided. For now ``--local DIR`` assumes that a local run which keeps
    its Redis writes the port to ``DIR/redis.port`` (one line, a port on 127.0.0.1); the shared
    resolution of a local work directory (issue 15) replaces this body when it lands.
    """
    if a.local is None:
        return a.redis
    d = Path(a.local).expanduser()
    port_file = d / "redis.port"
    if not d.is_dir():
        raise UsageError(f"--local {a.local}: no such directory")
    if not port_file.is_file():
        raise UsageError(f"--local {a.local}: no redis.port there, so no Redis of a local run to read;"
                         " pass --redis URL instead")
    text = port_file.read_text().strip()
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"--local {a.local}: redis.port holds {text[:40]!r}, not a port number")
    return f"redis://127.0.0.1:{int(text)}/0"


def cmd_dashboard(a: argparse.Namespace) -> int:
    problem = token_problem(a.host, a.token)
    if problem:
        raise UsageError(problem)
    url = redis_url(a)
    r: Any = connect(url)
    try:
        # optional dependency (the `dashboard` extra: starlette, uvicorn), imported by this command only
        from pbt_mq.dashboard import serve
    except ModuleNotFoundError as exc:
        raise ImportError(f"pbt dashboard needs {exc.name}: pip install 'pbt-mq[dashboard]'") from None
    return serve.run(r, a.host, a.port, a.token, redact(url), a.stale_s, a.log_level)


def register(sub: Any) -> None:
    add_dashboard_arguments(sub.add_parser(
        "dashboard", help="the population in a browser: experiments, members, curves, schedules, lineage, workers"))
