"""Lua scripts, loaded from ``lua/*.lua`` (each file's header lists the keys it touches)."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis


@cache
def source(name: str) -> str:
    return resources.files("pbt_mq").joinpath("lua", f"{name}.lua").read_text()


def call(client: redis.Redis, name: str, keys: list[str], args: list) -> object:
    """EVALSHA, loading the script once if Redis does not have it (new server, restart, failover).

    Works on a client and on a pipeline in immediate (WATCH) mode alike.
    """
    # execute_command: a Redis Cluster pipeline has no evalsha/eval methods, but routes these
    try:
        return client.execute_command("EVALSHA", sha(name), len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:  # EVAL runs it and caches it for the next EVALSHA
        return client.execute_command("EVAL", source(name), len(keys), *keys, *args)


@cache
def sha(name: str) -> str:
    import hashlib

    return hashlib.sha1(source(name).encode()).hexdigest()


def set_state_if(r: redis.Redis, meta_key: str, expected: str, new: str, reason: str, now_ms: int) -> bool:
    return bool(r.eval(source("set_state_if"), 1, meta_key, expected, new, reason, now_ms))


def claim_segment(r: redis.Redis, member_key: str, meta_key: str, job_id: str, worker: str, now_ms: int) -> str:
    res = r.eval(source("claim_segment"), 2, member_key, meta_key, job_id, worker, now_ms)
    return res.decode() if isinstance(res, bytes) else str(res)
