"""Identifiers and clocks every process agrees on: experiment and member ids, member seeds, ms time."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

EXPERIMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def now_ms() -> int:
    """Wall-clock milliseconds: what every ``*_ms`` field in Redis holds."""
    return int(time.time() * 1000)


def new_experiment_id(name: str) -> str:
    """``NAME-YYYYmmdd-HHMMSS-xxxx``: sortable by launch time, unique without coordination."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def member_ids(n: int) -> list[str]:
    """``m000``, ``m001``, ...: zero-padded so ids sort as members were numbered."""
    width = max(3, len(str(n - 1)))
    return [f"m{i:0{width}d}" for i in range(n)]


def member_seed(seed: int, member: str) -> int:
    """A member's init seed: stable across machines (sha256, not ``hash()``), different per member."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{member}".encode()).digest()[:4], "big")


def replacement_seed(seed: int, member: str, seq: int) -> int:
    """The seed of a member restarted fresh after its segment ``seq`` failed: new (a fresh start with
    the old seed could replay the same failure), and a pure function of the log, so replay finds it."""
    return member_seed(seed, f"{member}/replaced/{seq}")


def entry_ms(entry_id: bytes | str) -> int:
    """When a Redis stream entry was added: its id's milliseconds."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(s.split("-", 1)[0])


def experiment_ids(raw: list[bytes]) -> list[str]:
    """The ids in a ``pbt:experiments`` reply that can be experiments; anything else written there by hand
    (not UTF-8, not an id) is left out, so no reader trips on it."""
    out = []
    for e in raw:
        text = e.decode(errors="replace") if isinstance(e, bytes) else str(e)
        if EXPERIMENT_ID.match(text):
            out.append(text)
    return out


MEMBER_ID = re.compile(r"^m[0-9]{3,6}$")


def leaders(reply: list[Any]) -> list[tuple[str, float]]:
    """A ``ZREVRANGE ... WITHSCORES`` reply of a leaderboard as (member, score), best first, keeping only
    names that can be members (``m000``...): a name written there by hand is never "the best member"."""
    out = []
    for m, s in reply:
        name = m.decode(errors="replace") if isinstance(m, bytes) else str(m)
        if MEMBER_ID.match(name):
            out.append((name, float(s)))
    return out
