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
