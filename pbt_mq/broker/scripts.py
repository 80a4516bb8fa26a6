"""Lua scripts, loaded from ``lua/*.lua`` (each file's header lists the keys it touches), run by EVALSHA.

A script's source crosses the wire once per Redis server (``SCRIPT LOAD`` through the first
``EVAL``, after a restart or failover), never per call.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis


@cache
def source(name: str) -> str:
    return resources.files("pbt_mq.broker").joinpath("lua", f"{name}.lua").read_text()


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()


def call(client: Any, name: str, keys: list[str], args: list) -> Any:
    """EVALSHA, loading the script once if Redis does not have it (new server, restart, failover).

    Works on a client and on a pipeline in immediate (WATCH) mode alike.
    """
    # execute_command: a Redis Cluster pipeline has no evalsha/eval methods, but routes these
    try:
        return client.execute_command("EVALSHA", sha(name), len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:  # EVAL runs it and caches it for the next EVALSHA
        return client.execute_command("EVAL", source(name), len(keys), *keys, *args)


def call_many(client: Any, calls: list[tuple[str, list[str], list]], extra: list[tuple] = ()) -> list[Any]:
    """Several scripts (name, keys, args), then ``extra`` raw commands, in one round trip (a pipeline,
    no transaction); a script Redis has not loaded yet is run again alone (only that one: each
    runs once). Returns every reply in order; a command's error is raised."""
    pipe = client.pipeline(transaction=False)
    for name, keys, args in calls:
        pipe.execute_command("EVALSHA", sha(name), len(keys), *keys, *args)
    for cmd in extra:
        pipe.execute_command(*cmd)
    replies = pipe.execute(raise_on_error=False)
    for i, (name, keys, args) in enumerate(calls):
        if isinstance(replies[i], redis.exceptions.NoScriptError):
            replies[i] = call(client, name, keys, args)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def text(reply: Any) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)  # bytes written by hand too


def set_state_if(r: Any, meta_key: str, expected: str, new: str, reason: str, now_ms: int) -> bool:
    """Change an experiment's state only from ``expected`` (set_state_if.lua)."""
    return bool(call(r, "set_state_if", [meta_key], [str(expected), str(new), reason, now_ms]))


def claim_segment(r: Any, member_key: str, meta_key: str, job_id: str, worker: str, now_ms: int) -> str:
    """"ok", or why a worker must skip this job (claim_segment.lua)."""
    return text(call(r, "claim_segment", [member_key, meta_key], [job_id, worker, now_ms]))


def move_aside(r: Any, key: str, aside: str, expected: str) -> str:
    """Move ``key`` to ``aside`` if it holds another type than ``expected``: the type moved, or ''."""
    return text(call(r, "move_aside", [key, aside], [expected]))
