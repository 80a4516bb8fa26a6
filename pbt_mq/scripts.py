"""Lua scripts, loaded from ``lua/*.lua`` (each file's header lists the keys it touches)."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis


@cache
def source(name: str) -> str:
    return resources.files("pbt_mq").joinpath("lua", f"{name}.lua").read_text()


def set_state_if(r: redis.Redis, meta_key: str, expected: str, new: str, reason: str, now_ms: int) -> bool:
    return bool(r.eval(source("set_state_if"), 1, meta_key, expected, new, reason, now_ms))


def claim_segment(r: redis.Redis, member_key: str, meta_key: str, job_id: str, worker: str, now_ms: int) -> str:
    res = r.eval(source("claim_segment"), 2, member_key, meta_key, job_id, worker, now_ms)
    return res.decode() if isinstance(res, bytes) else str(res)
