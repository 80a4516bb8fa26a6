"""Taking over what a dead `pbt local` fleet left in Redis (tools.resume), and pausing, against a real Redis."""

from __future__ import annotations

from helpers import TOY

from pbt_mq.broker.jobs import queue_for
from pbt_mq.broker.scripts import claim_segment
from pbt_mq.config.parse import load_file
from pbt_mq.control.reaper import Orphan, requeue
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import GROUP, WORKERS, Keys, private_queue, worker_key
from pbt_mq.core.model import MemberState
from pbt_mq.state.experiment import is_paused, pause, read_meta, stop, unpause
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.tools.fleet import ARBITER
from pbt_mq.tools.resume import CLAIMABLE_IDLE_MS, forget_dead_fleet, recover, unfinished


def test_recover_requeues_what_was_in_flight_without_counting_it_and_frees_the_dead_arbiters_events(r, tmp_path):
    cfg = load_file(TOY, ["population.size=3", "population.initial=[]"])
    exp = launch_in_process(r, cfg, f"file://{tmp_path}")
    k, shared = Keys(exp), queue_for(r, "pbt")
    jobs = {m: r.hget(k.member(m), "job").decode() for m in ("m000", "m001", "m002")}
    # m000 was running on local-w0; m001's job was in local-w1's own queue; m002 still waits in the shared queue
    r.lmove(shared.key, shared.intermediate_queue_key)
    assert claim_segment(r, k.member("m000"), k.meta, jobs["m000"], "local-w0", now_ms()) == "ok"
    own = queue_for(r, private_queue("pbt", "local-w1"))
    r.lmove(shared.key, own.key)
    r.hset(k.member("m001"), "queue", own.name)
    for w in ("local-w0", "local-w1"):  # heartbeats the AOF kept
        r.hset(worker_key(w), mapping={"beat_ms": now_ms(), "queue": "pbt"})
        r.zadd(WORKERS, {w: now_ms()})
    r.xadd(k.events, {"member": "m002", "seq": 0})  # read by the dead arbiter, never acknowledged
    r.xreadgroup(GROUP, ARBITER, {k.events: ">"})

    assert forget_dead_fleet(r) == 2 and not r.exists(worker_key("local-w0")) and r.zcard(WORKERS) == 0
    assert recover(r, exp) == {"requeued": 2, "events": 1}
    assert shared.get_job_ids() == [jobs["m002"], jobs["m000"] + "_r1", jobs["m001"] + "_r1"]
    assert own.get_job_ids() == [] and r.llen(shared.intermediate_queue_key) == 0
    for m in ("m000", "m001"):
        h = r.hgetall(k.member(m))
        assert h[b"state"] == b"queued" and h[b"reaped"] == b"0", h  # an interrupted fleet is not the segment's fault
    pending = r.xpending_range(k.events, GROUP, min="-", max="+", count=10)
    assert pending[0]["time_since_delivered"] >= CLAIMABLE_IDLE_MS and pending[0]["times_delivered"] == 1
    assert recover(r, exp)["requeued"] == 0  # nothing is in flight any more


def test_a_requeue_always_takes_a_new_job_id(r, tmp_path):
    cfg = load_file(TOY, ["population.size=1", "population.initial=[]"])
    exp = launch_in_process(r, cfg, f"file://{tmp_path}")
    k = Keys(exp)
    base = r.hget(k.member("m000"), "job").decode()
    seen = []
    for count in (True, False, False, True):  # reaped, resumed, resumed, reaped
        job = r.hget(k.member("m000"), "job").decode()
        assert requeue(r, exp, cfg, Orphan("m000", job, MemberState.QUEUED, "test"), count=count) == "requeued"
        seen.append(r.hget(k.member("m000"), "job").decode())
    assert seen == [base + "_r1", base + "_r2", base + "_r3", base + "_r4"]
    assert r.hget(k.member("m000"), "reaped") == b"2"  # only the counted ones


def test_pause_is_a_stop_with_a_reason_that_resume_undoes(r, tmp_path):
    cfg = load_file(TOY, ["population.size=1", "population.initial=[]"])
    a = launch_in_process(r, cfg, f"file://{tmp_path}")
    b = launch_in_process(r, cfg, f"file://{tmp_path}")
    c = launch_in_process(r, cfg, f"file://{tmp_path}")
    assert pause(r, a, "test") and not pause(r, a, "again")
    stop(r, b)  # stopped by a user: not pause(d), never resumed
    assert unfinished(r) == [a, c]
    meta = read_meta(r, a)
    assert meta.state == "stopped" and is_paused(meta) and meta.reason == "paused: test"
    job = r.hget(Keys(a).member("m000"), "job").decode()
    assert claim_segment(r, Keys(a).member("m000"), Keys(a).meta, job, "w", now_ms()).startswith("experiment is")
    assert unpause(r, a) and unpause(r, c) and not unpause(r, b)
    meta = read_meta(r, a)
    assert meta.state == "running" and meta.reason == "" and meta.done_ms is None
    assert claim_segment(r, Keys(a).member("m000"), Keys(a).meta, job, "w", now_ms()) == "ok"
