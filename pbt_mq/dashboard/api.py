"""The JSON under ``/api/`` (for the page and for tools) and the page's live stream (server-sent events).

Every answer comes from the cached views of ``data.Board``; Redis is read in a worker thread,
never on the event loop, and at the pace ``data`` allows whatever the number of requests.

    GET /api/experiments                          the newest experiments: state, best, progress, age
    GET /api/experiments/{exp}                    summary and members (``pbt status --json`` and more; above
                                                  bands.LARGE_POPULATION the best rows and ``large``: bands)
    GET /api/experiments/{exp}/members            every member
    GET /api/experiments/{exp}/lineage            lineage nodes ?after=N&limit=L (see ``follow``)
    GET /api/experiments/{exp}/members/{m}/lineage  m's newest checkpoint's ancestry (``pbt lineage --json``)
    GET /api/experiments/{exp}/stream             text/event-stream: a frame per change, ids = node cursor
    GET /api/compare?exp=A&exp=B                  ``pbt compare``: best per step and over time, finals, schedules
    GET /api/workers                              the fleet's heartbeats
    GET /api/health                               Redis answers
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pbt_mq.config.reader import ConfigError
from pbt_mq.dashboard.data import BATCH, Board, ExperimentView, dumps
from pbt_mq.observe.compare import count_problem
from pbt_mq.state.experiment import UnknownExperiment

TICK_S = 0.5  # how often a stream looks for a newer snapshot (the view decides when Redis is read)
KEEPALIVE_S = 15.0
MAX_STREAMS = 64  # open pages per dashboard process; more get 503


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


def _board(request: Request) -> Board:
    return request.app.state.board


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValueError(f"{name}={raw[:40]}: expected a whole number in {low}..{high}")  # -> 400 in `answer`
    return int(raw)


async def _view(request: Request) -> ExperimentView:
    return await run_in_threadpool(_board(request).view, request.path_params["exp"])


def answer(handler: Any) -> Any:
    """The errors every route shares: 404 unknown experiment, 400 bad parameter, 503 Redis down."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except UnknownExperiment as exc:
            return json_response({"error": str(exc)}, 404)
        except ConfigError as exc:  # this experiment's stored config is unreadable: it alone, and said why
            return json_response({"error": str(exc)}, 422)
        except ValueError as exc:
            return json_response({"error": f"bad parameter: {exc}"}, 400)
        except redis.RedisError as exc:
            return json_response({"error": f"redis: {exc}"}, 503)

    return wrapped


@answer
async def experiments(request: Request) -> Response:
    rows = await run_in_threadpool(_board(request).experiments)
    return json_response({"experiments": rows, "redis": _board(request).label})


def _snapshot(view: ExperimentView) -> dict[str, Any]:
    if not view.snapshot:
        raise redis.ConnectionError(view.error or "no snapshot yet")
    return view.snapshot


@answer
async def experiment(request: Request) -> Response:
    view = await _view(request)
    return json_response({**_snapshot(view), "error": view.error})


@answer
async def members(request: Request) -> Response:
    view = await _view(request)
    snap = _snapshot(view)
    return json_response({"experiment": view.exp, "metric": snap["metric"], "mode": snap["mode"],
                          "best": snap["best"], "members": view.all_members or snap["members"]})


@answer
async def lineage(request: Request) -> Response:
    after = _int_param(request, "after", 0, 0, 1 << 62)
    limit = _int_param(request, "limit", BATCH, 1, BATCH)
    view = await _view(request)
    text, _ = await run_in_threadpool(view.frame, after, limit)
    return Response(text, media_type="application/json")


@answer
async def member_lineage(request: Request) -> Response:
    view = await _view(request)
    member = request.path_params["member"]
    doc = await run_in_threadpool(view.log.ancestry, member)
    if doc is None:
        return json_response({"error": f"{view.exp}: member {member!r} has no checkpoint yet, or is no member"}, 404)
    return json_response({"experiment": view.exp, **doc})


@answer
async def compared(request: Request) -> Response:
    exps = list(dict.fromkeys(request.query_params.getlist("exp")))
    if problem := count_problem(exps):
        raise ValueError(f"exp (?exp=A&exp=B): {problem}")
    doc = await run_in_threadpool(_board(request).compare, exps)
    return json_response(doc)


@answer
async def fleet(request: Request) -> Response:
    rows = await run_in_threadpool(_board(request).workers)
    return json_response({"workers": rows, "stale_s": _board(request).stale_s})


@answer
async def health(request: Request) -> Response:
    await run_in_threadpool(_board(request).r.ping)
    return json_response({"ok": True, "redis": _board(request).label})


@answer
async def stream(request: Request) -> Response:
    """A frame whenever the view has something newer; the node cursor is the SSE id, so a
    reconnecting page (Last-Event-ID) gets only what it lacks."""
    raw = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    cursor = int(raw) if raw.isdigit() else 0  # an id we did not send: start from the beginning
    view = await _view(request)
    state = request.app.state
    if state.streams >= MAX_STREAMS:
        return json_response({"error": f"too many open pages on this dashboard ({MAX_STREAMS})"}, 503)
    state.streams += 1  # counted before any await, so concurrent requests cannot all pass the check
    held = [True]

    def release() -> None:  # once: by the stream's end, or after the response if the stream never started
        if held[0]:
            held[0] = False
            state.streams -= 1

    async def frames() -> AsyncIterator[str]:
        nonlocal cursor
        sent_generation, last_sent = -1, time.monotonic()
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    await run_in_threadpool(view.refresh)
                except ConfigError:  # its stored config broke while open: end; the page reconnects and is told why
                    return
                if view.snapshot and (view.generation != sent_generation or cursor < len(view.log.nodes)):
                    sent_generation = view.generation
                    text, cursor = await run_in_threadpool(view.frame, cursor)
                    last_sent = time.monotonic()
                    yield f"id: {cursor}\nevent: frame\ndata: {text}\n\n"
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield ": keepalive\n\n"
                await asyncio.sleep(0 if cursor < len(view.log.nodes) else TICK_S)
        finally:
            release()

    return StreamingResponse(frames(), media_type="text/event-stream", headers={"x-accel-buffering": "no"},
                             background=BackgroundTask(release))


ROUTES = [
    Route("/api/experiments", experiments),
    Route("/api/experiments/{exp}", experiment),
    Route("/api/experiments/{exp}/members", members),
    Route("/api/experiments/{exp}/lineage", lineage),
    Route("/api/experiments/{exp}/members/{member}/lineage", member_lineage),
    Route("/api/experiments/{exp}/stream", stream),
    Route("/api/compare", compared),
    Route("/api/workers", fleet),
    Route("/api/health", health),
]
