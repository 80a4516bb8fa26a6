"""The uvicorn adapter: listen on a socket we bind ourselves (a clear error when the port is
taken, ``--port 0`` for any free one), then serve until SIGINT/SIGTERM."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from pbt_mq.dashboard.app import build_app
from pbt_mq.dashboard.data import Board

SHUTDOWN_GRACE_S = 2  # open event streams never end by themselves: cut them after this


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --host/--port") from None
    sock.listen(128)  # connections wait in the backlog from now on, before uvicorn is up
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run(r: Any, host: str, port: int, token: str | None, redis_label: str, stale_s: float,
        log_level: str | None, on_board: Callable[[Board], None] | None = None) -> int:
    sock = bind(host, port)
    app = build_app(r, token, redis_label, stale_s, on_board)
    level = (log_level or "WARNING").lower()
    config = uvicorn.Config(app, log_level=level, access_log=level in ("debug", "info"), lifespan="off",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, server_header=False, proxy_headers=False)
    how = "open it once with ?token=YOUR_TOKEN, or send 'Authorization: Bearer YOUR_TOKEN'" if token else "no token (loopback only)"
    print(f"pbt dashboard: {url_of(sock, host)}  (Redis {redis_label}; read-only; {how}; Ctrl-C stops)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    print("pbt dashboard: stopped", file=sys.stderr)
    return 0
