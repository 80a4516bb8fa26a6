"""What pbt-mq relies on in redis-py's pipelines (broker/pipes.py), against the installed redis-py."""

from __future__ import annotations

import redis
from contracts import declared, in_range

from pbt_mq.broker import pipes, scripts


def test_the_installed_redis_py_is_in_the_declared_range():
    assert in_range("redis", redis.__version__), (redis.__version__, str(declared("redis")))


def test_several_evalsha_in_one_write_on_a_watching_pipeline(r):
    r.script_flush()
    calls = [(["k1"], ["u1", 1]), (["k2"], ["u2", 1])]
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("w")
        assert pipes.evalsha_many(pipe, "set_current", calls) is None  # not loaded yet: the caller goes one by one
    r.script_load(scripts.source("set_current"))
    r.hset("k1", "current", "")
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("w")
        assert pipes.evalsha_many(pipe, "set_current", calls) == [0, 0]  # k1: HSET of an existing field -> 0
        pipe.multi()
        pipe.hget("k1", "current")
        assert pipe.execute() == [b"u1"]  # both calls ran on the pipeline's connection, then the MULTI
    assert not r.exists("k2")  # set_current never creates a heartbeat


def test_replies_are_read_by_name(r):
    with r.pipeline(transaction=True) as pipe:
        pipe.multi()
        named = pipes.Replies(pipe)
        pipe.set("a", "1")
        pipe.incr("n")
        named.name("first incr")
        pipe.set("b", "2")
        pipe.incrby("n", 5)
        named.name("second incr")
        assert named.execute() == {"first incr": 1, "second incr": 6}
