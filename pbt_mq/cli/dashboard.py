"""``pbt dashboard``: the population in a browser, read-only, from the Redis the fleet shares.

starlette and uvicorn (the ``dashboard`` extra) are imported by this command only, when it
runs, so every other command works without them.
"""

from __future__ import annotations

import argparse
from typing import Any

from pbt_mq.broker.connect import connect, redact
from pbt_mq.cli.options import UsageError, env_option, log_option, state_options
from pbt_mq.dashboard.auth import token_problem
from pbt_mq.tools.workdir import follow_to_saved_state, live_dir_of, shown

DEFAULT_PORT = 8265


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text}: expected a port number in 0..65535 (0: any free port)")
    return value


def add_dashboard_arguments(p: argparse.ArgumentParser) -> None:
    state_options(p)  # --redis URL | --local DIR, resolved by cli.options.guard (tools.workdir.redis_for)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1); anything but loopback requires a token")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free port)")
    env_option(p, "--token", env="PBT_DASHBOARD_TOKEN",
               help="require 'Authorization: Bearer TOKEN' (or ?token=TOKEN once, kept in a cookie)")
    p.add_argument("--stale-s", type=float, default=6.0,
                   help="flag a worker whose last heartbeat is older than this (pbt-worker's TTL is 3 beats: 6 s)")
    log_option(p)
    p.set_defaults(fn=cmd_dashboard)


def cmd_dashboard(a: argparse.Namespace) -> int:
    problem = token_problem(a.host, a.token)
    if problem:
        raise UsageError(problem)
    url = a.redis  # where guard found the experiments: a fleet's Redis, or a `pbt local` work dir's
    r: Any = connect(url)
    try:
        # optional dependency (the `dashboard` extra: starlette, uvicorn), imported by this command only
        from pbt_mq.dashboard import serve
    except ModuleNotFoundError as exc:
        raise ImportError(f"pbt dashboard needs {exc.name}: pip install 'pbt-mq[dashboard]'") from None
    d = live_dir_of(url)  # a live pbt local's server: when that run ends, show its saved state instead
    on_board = None if d is None else (lambda board: follow_to_saved_state(
        d, url, lambda new: board.switch(connect(new), f"{redact(new)} (the saved state of {shown(d)})")))
    return serve.run(r, a.host, a.port, a.token, redact(url), a.stale_s, a.log_level, on_board)


def register(sub: Any) -> None:
    add_dashboard_arguments(sub.add_parser(
        "dashboard", help="the population in a browser: experiments, members, curves, schedules, lineage, workers"))
