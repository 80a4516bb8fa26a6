"""Issue 24's Lua-side fuzz: every script in ``broker/lua`` run against keys holding random and
adversarial records (garbage field values, junk members and scores, missing keys) with the arguments
our code passes. A script must reply normally to any value written into a key of the right type; the
only error it may raise is Redis's own WRONGTYPE, when a key itself was replaced by another type
(the daemons isolate that; ``test_fuzz`` covers them), never a Lua runtime error such as "attempt
to compare number with nil"."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from test_fuzz import garbage

from pbt_mq.broker.scripts import call, source
from pbt_mq.core.keys import Keys, worker_key

K = Keys("luafuzz")
LUA = Path(__file__).resolve().parents[2] / "pbt_mq" / "broker" / "lua"
FIELDS = ["seq", "state", "job", "worker", "window", "queue", "started_ms", "limbo_ms", "current", "reason"]
STATES = ["running", "ready", "queued", "done", "failed", "stopped", "bogus", ""]


@dataclass(frozen=True)
class Script:
    """One script: its keys with their Redis types, and the arguments our callers pass (drawn per trial)."""

    name: str
    keys: list[tuple[str, str]]  # (key, type)
    args: Callable[[random.Random], list]


def decide_args(rng: random.Random) -> list:
    finite = rng.random() < 0.8
    seq = rng.choice([0, 1, 2, 7])
    return ["m001", seq, repr(rng.uniform(-5, 5)) if finite else "nan", int(finite),
            json.dumps({"key": f"m001/{seq}"}), rng.choice(["truncation", "tournament", "none"]),
            rng.choice([0.2, 0.25, 0.5]), repr(rng.random()), rng.choice([0, 64]),
            rng.choice(["strict", "rank", "random"]), rng.choice(["", "3"]), rng.choice([0, 40]), rng.choice([0, 60]),
            rng.choice(["", "2", "5"]), rng.choice([1, 2, 4])]


SCRIPTS = [
    Script("decide", [(K.member("m001"), "hash"), (K.scores, "zset"), (K.ckpts, "hash"), (K.meta, "hash"),
                      (K.board(3), "zset"), (K.boards, "zset"), (K.reached, "zset"), (K.windows, "hash")],
           decide_args),
    Script("publish", [(K.member("m001"), "hash"), (K.meta, "hash"), (K.events, "stream"), (K.uploading, "zset"),
                       (K.stored, "zset")],
           lambda rng: ["job-1", "w1", "m001", rng.randint(0, 9), rng.randint(0, 999), repr(rng.random()), b"\x80",
                        "luafuzz/m001/3", rng.choice(["0", "1"]), 1_700_000_000_000]),
    Script("claim_segment", [(K.member("m001"), "hash"), (K.meta, "hash")],
           lambda rng: [rng.choice(["job-1", "job-2"]), "w1", 1_700_000_000_000]),
    Script("set_state_if", [(K.meta, "hash")],
           lambda rng: [rng.choice(STATES), rng.choice(STATES), "why", 1_700_000_000_000]),
    Script("set_current", [(worker_key("w1"), "hash")], lambda rng: [rng.choice(["", "luafuzz/m001/3"])]),
    Script("ancestry", [(K.parents, "hash")],
           lambda rng: [rng.choice([-1, 0, 3]), *rng.sample(["a", "b", "c", "luafuzz/m001/3", ""], 3)]),
    Script("archive_chunk", [(K.lineage, "stream"), (K.archive, "list")],
           lambda rng: ["1-0", "2-0", "2-1", json.dumps([{"member": "m001"}])]),
    Script("move_job", [("rq:queue:pbt@w1", "list"), ("rq:queue:pbt", "list"), (K.member("m001"), "hash")],
           lambda rng: [rng.choice(["job-1", "job-2"]), "pbt"]),
    Script("take_job", [("rq:queue:pbt@w1", "list"), ("rq:queue:pbt", "list")],
           lambda rng: rng.choice([["rq:job:"], ["rq:job:", rng.choice(["w1", "w2", ""]), rng.choice([0, 1, 2, 64]),
                                                 rng.choice([0, 1, 30_000, garbage(rng)])]])),
    Script("move_aside", [(K.member("m001"), "hash"), (f"{K.prefix}:quarantine:member:m001:1", "hash")],
           lambda rng: [rng.choice(["hash", "zset", "stream", "list"])]),
]


def value(rng: random.Random) -> bytes | str:
    """Garbage, or now and then a value a script branches on (so its deeper paths run too)."""
    return rng.choice([*STATES, "job-1", "w1", "1", "3", "1 2 x 3", "a"]) if rng.random() < 0.4 else garbage(rng)


def write(r: redis.Redis, key: str, kind: str, rng: random.Random) -> str:
    """Leave ``key`` absent, fill it with records of its own type, or replace it by another type."""
    r.delete(key)
    how = rng.choices(["absent", "own", "wrong"], [0.15, 0.75, 0.1])[0]
    if how == "wrong":
        r.set(key, garbage(rng)) if kind != "string" else r.rpush(key, garbage(rng))
    elif how == "own" and kind == "hash":
        r.hset(key, mapping={f: value(rng) for f in rng.sample(FIELDS, rng.randint(1, len(FIELDS)))}
               | {garbage(rng): garbage(rng), "m001": value(rng), "a": "b", "b": "a"})
    elif how == "own" and kind == "zset":
        r.zadd(key, {garbage(rng): rng.choice([0, -1, 3, 1e300, float("inf"), float("-inf")]) for _ in range(4)}
               | {"m001": rng.uniform(-5, 5), "m002": rng.uniform(-5, 5)})
    elif how == "own" and kind == "stream":
        for _ in range(rng.randint(1, 3)):
            r.xadd(key, {rng.choice(["member", "seq", "msg", "score"]): garbage(rng)})
    elif how == "own" and kind == "list":
        r.rpush(key, *[rng.choice(["job-1", "job-2", garbage(rng)]) for _ in range(rng.randint(1, 4))])
        for job in set(r.lrange(key, 0, -1)) if key.startswith("rq:queue:") else ():
            r.delete(b"rq:job:" + job)
            if rng.random() < 0.5:  # with take_job.lua's affinity fields, sometimes
                r.hset(b"rq:job:" + job, mapping={"status": garbage(rng), garbage(rng): garbage(rng)}
                       | {f: rng.choice(["w1", "w2", "", "0", "1700000000000", garbage(rng)])
                          for f in ("pbt_home", "pbt_passed_ms") if rng.random() < 0.6})
            elif rng.random() < 0.2:
                r.set(b"rq:job:" + job, garbage(rng))
                how = "wrong"
    return how


def test_every_script_is_fuzzed():
    assert sorted(p.stem for p in LUA.glob("*.lua")) == sorted(s.name for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_a_script_answers_any_record_and_fails_only_on_a_key_of_another_type(script, r):
    source(script.name)  # the file exists and loads
    rng = random.Random(script.name)
    replied = 0
    for trial in range(300):
        r.flushdb()
        hows = [write(r, key, kind, rng) for key, kind in script.keys]
        args = script.args(rng)
        try:
            call(r, script.name, [key for key, _ in script.keys], args)
            replied += 1
        except redis.exceptions.ResponseError as e:
            assert "WRONGTYPE" in str(e) and "wrong" in hows, (trial, hows, args, str(e))
    assert replied >= 200, replied  # most trials held keys of the right type and must have answered


def test_move_aside_moves_only_a_key_of_another_type_once(r):
    key, aside = K.member("m001"), f"{K.prefix}:quarantine:member:m001:1"
    r.hset(key, "state", "running")
    assert call(r, "move_aside", [key, aside], ["hash"]) == b"" and r.type(key) == b"hash"  # as it should be
    r.delete(key)
    r.set(key, "junk")
    assert call(r, "move_aside", [key, aside], ["hash"]) == b"string"
    assert r.get(aside) == b"junk" and not r.exists(key)
    assert call(r, "move_aside", [key, aside], ["hash"]) == b""  # a second arbiter: nothing left to move
