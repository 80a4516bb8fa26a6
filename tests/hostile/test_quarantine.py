"""Issue 24: a key replaced by another Redis type (``SET`` over a member's hash or over the events
stream) or an events stream deleted by hand. Redis answers WRONGTYPE or NOGROUP to every reader; one
blocking read over every experiment's stream used to stall the whole fleet. The arbiter moves the key
aside (control.quarantine), fails only the member it concerns, trains again the segments whose ready
events it lost, and every experiment finishes."""

from __future__ import annotations

import time

import pytest
from helpers import PAPER_INIT_4, launch, pbt, status

from pbt_mq.control.quarantine import expected_type, repair
from pbt_mq.core.keys import EXPERIMENTS, Keys
from pbt_mq.core.model import Action, Lineage
from pbt_mq.state.experiment import load_config

SLOW = ("population.size=4", PAPER_INIT_4, "trainable_args.delay_s=0.05", "stop.steps=48")


def started(r, exp: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while r.xlen(Keys(exp).lineage) < 2:
        assert time.monotonic() < deadline, "the experiment never decided a segment"
        time.sleep(0.05)


def test_expected_types_cover_what_a_release_writes():
    k = Keys("e1")
    assert [expected_type(k, key) for key in (k.meta, k.member("m003"), k.events, k.board(40), k.scores,
                                              Keys.vectors(k.board(40)), Keys.vectors(k.scores), k.archive)] == [
        "hash", "hash", "stream", "zset", "zset", "hash", "hash", "list"]
    assert expected_type(k, f"{k.prefix}:quarantine:events:1") is None  # what was moved aside stays there
    assert expected_type(k, "pbt:{e2}:meta") is None  # another experiment's key is not this one's


@pytest.mark.timeout(300)
def test_a_key_of_another_type_is_moved_aside_and_only_its_member_fails(fleet, redis_url, r, tmp_path):
    fleet.start("worker", "w1", "--heartbeat-s", "0.5")
    fleet.start("worker", "w2", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1", "--reap-interval-ms", "300", "--reap-grace-ms", "1000")
    store = f"file://{tmp_path / 'ckpt'}"
    victim, other = launch(redis_url, store, *SLOW), launch(redis_url, store, *SLOW)
    started(r, victim)
    k = Keys(victim)
    r.delete(k.member("m001"))
    r.set(k.member("m001"), "not a hash")
    r.delete(k.events)  # the ready events in it are lost with it
    r.set(k.events, "not a stream")
    for exp in (other, victim):
        res = pbt("wait", exp, "--timeout", "120", "--redis", redis_url, timeout=140)
        assert res.returncode == 0, f"{exp}: {res.stdout}{res.stderr}\n{fleet.all_logs()[-5000:]}"
    st = status(redis_url, victim)
    states = {m["id"]: m["state"] for m in st["members"]}
    assert states == {"m000": "done", "m001": "failed", "m002": "done", "m003": "done"}, states
    assert "held a string, not a hash; moved aside to" in r.hget(k.member("m001"), "error").decode()
    aside = sorted(key.decode() for key in r.scan_iter(match=f"{k.prefix}:quarantine:*"))
    assert [a.rsplit(":", 1)[0] for a in aside] == [f"{k.prefix}:quarantine:events", f"{k.prefix}:quarantine:member:m001"]
    assert r.get(aside[0]) == b"not a stream"  # moved, not deleted: what the hand wrote is kept
    logs = "".join(fleet.log(name) for name in ("a1", "w1", "w2"))
    assert f"{k.events} held a string where a stream belongs" in fleet.log("a1") and "Traceback" not in logs
    assert all(m["state"] == "done" for m in status(redis_url, other)["members"])


@pytest.mark.timeout(300)
def test_an_events_stream_deleted_by_hand_gets_its_group_back(fleet, redis_url, r, tmp_path):
    fleet.start("worker", "w1", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1", "--reap-interval-ms", "300", "--reap-grace-ms", "1000")
    store = f"file://{tmp_path / 'ckpt'}"
    victim, other = launch(redis_url, store, *SLOW), launch(redis_url, store, *SLOW)
    started(r, victim)
    r.delete(Keys(victim).events)  # a worker's next XADD makes a stream with no group: NOGROUP for every read
    for exp in (other, victim):
        res = pbt("wait", exp, "--timeout", "120", "--redis", redis_url, timeout=140)
        assert res.returncode == 0, f"{exp}: {res.stdout}{res.stderr}\n{fleet.all_logs()[-5000:]}"
        assert all(m["state"] == "done" for m in status(redis_url, exp)["members"]), exp
    assert "Traceback" not in fleet.log("a1") + fleet.log("w1")
    assert "group on" in fleet.log("a1") and "created again" in fleet.log("a1")


def test_pbt_list_says_which_experiment_holds_a_key_of_another_type(redis_url, r):
    """Before any arbiter moved it aside, a reader answers for the other experiments and names the key."""
    r.zadd(EXPERIMENTS, {"e-broken": 1, "e-fine": 2})
    r.set(Keys("e-broken").meta, "not a hash")
    fine = Keys("e-fine")
    r.hset(fine.meta, mapping={"state": "running", "metric": "q", "mode": "max"})
    r.zadd(fine.scores, {"m000": 0.5})
    r.set(fine.member("m000"), "not a hash either")
    res = pbt("list", "--redis", redis_url)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("e-broken  ?  no score yet  unreadable: pbt:{e-broken}:meta: WRONGTYPE"), lines
    assert lines[1].startswith("e-fine  running  best q=0.5 (m000, step None)"), lines


def test_a_member_that_had_ended_keeps_its_end_and_a_moved_meta_fails_the_experiment(redis_url, r, tmp_path):
    """The review's cases: the count of finished members never runs ahead (no early "done"), and an
    experiment whose record is gone says so instead of vanishing."""
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=3")
    cfg = load_config(r, exp)
    k = Keys(exp)
    r.xadd(k.lineage, Lineage.fields(member="m000", seq=5, action=Action.DONE, ops=[]))
    r.hset(k.member("m000"), mapping={"state": "done"})
    r.hset(k.meta, "finished", 1)
    for m in ("m000", "m001"):
        r.delete(k.member(m))
        r.set(k.member(m), "junk")
    assert repair(r, exp, cfg) >= 2
    assert r.hget(k.member("m000"), "state") == b"done" and r.hget(k.member("m001"), "state") == b"failed"
    assert int(r.hget(k.meta, "finished")) == 2 and r.hget(k.meta, "state") == b"running"  # m002 still to go
    assert repair(r, exp, cfg) == 0  # nothing left to move: a second pass (or arbiter) changes nothing
    r.delete(k.meta)
    r.set(k.meta, "junk")
    repair(r, exp, cfg)
    assert r.hget(k.meta, "state") == b"failed" and b"moved aside to" in r.hget(k.meta, "reason")
    line = pbt("list", "--redis", redis_url).stdout
    assert line.startswith(f"{exp}  failed  ") and "cannot go on without its record" in line, line
