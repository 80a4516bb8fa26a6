"""The dashboard as one ASGI app: the page, its static files, the API, behind ``auth.Guard``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from pbt_mq.dashboard.api import ROUTES
from pbt_mq.dashboard.auth import Guard
from pbt_mq.dashboard.data import Board

STATIC = Path(__file__).resolve().parent / "static"


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


class Compressed:
    """gzip for every answer the browser asked it for, but the event stream (a compressor buffers, and
    a buffered stream never reaches the page; not every Starlette we accept excludes it by itself)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.gzip = app, GZipMiddleware(app, minimum_size=1024)

    @property
    def state(self) -> Any:
        """The app's state (the board, open streams), as on the app itself."""
        return self.app.state  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].endswith("/stream"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def build_app(r: Any, token: str | None, redis_label: str, stale_s: float = 6.0,
              on_board: Callable[[Board], None] | None = None) -> Guard:
    """The app for one Redis; ``token`` None means loopback without authentication. ``on_board`` gets
    the board once built (``pbt dashboard --local`` hands it the run's saved state when the run ends)."""
    app = Starlette(routes=[Route("/", index), *ROUTES, Mount("/static", StaticFiles(directory=STATIC), name="static")])
    app.state.board = Board(r, stale_s, redis_label)
    app.state.streams = 0
    if on_board is not None:
        on_board(app.state.board)
    return Guard(Compressed(app), token)
