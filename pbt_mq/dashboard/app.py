"""The dashboard as one ASGI app: the page, its static files, the API, behind ``auth.Guard``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pbt_mq.dashboard.api import ROUTES
from pbt_mq.dashboard.auth import Guard
from pbt_mq.dashboard.data import Board

STATIC = Path(__file__).resolve().parent / "static"


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def build_app(r: Any, token: str | None, redis_label: str, stale_s: float = 6.0,
              on_board: Callable[[Board], None] | None = None) -> Guard:
    """The app for one Redis; ``token`` None means loopback without authentication. ``on_board`` gets
    the board once built (``pbt dashboard --local`` hands it the run's saved state when the run ends)."""
    app = Starlette(routes=[Route("/", index), *ROUTES, Mount("/static", StaticFiles(directory=STATIC), name="static")])
    app.state.board = Board(r, stale_s, redis_label)
    app.state.streams = 0
    if on_board is not None:
        on_board(app.state.board)
    return Guard(app, token)
