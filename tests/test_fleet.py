"""End to end: real pbt-worker and pbt-arbiter processes, real redis-server, real S3 over HTTP."""

from __future__ import annotations

import time

from helpers import PAPER_INIT_4, event_counts, launch, lineage_counts, pbt, status

from pbt_mq.core.keys import Keys
from pbt_mq.state.lineage import records


def run_toy(fleet, redis_url: str, store: str, *sets: str) -> str:
    exp = launch(redis_url, store, "population.size=4", PAPER_INIT_4, *sets)
    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    return exp


def test_toy_population_of_4_on_2_workers_and_2_arbiters(fleet, redis_url, r, s3_url):
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    for name in ("a1", "a2"):
        fleet.start("arbiter", name, "--claim-idle-ms", "2000")

    exp = run_toy(fleet, redis_url, s3_url)
    st = status(redis_url, exp)
    assert st["state"] == "done"
    assert {m["state"] for m in st["members"]} == {"done"}
    assert all(m["scored_step"] == 100 for m in st["members"]), st["members"]
    # every segment decided once, every decision's segment ran once
    counts = lineage_counts(r, exp)
    assert counts and max(counts.values()) == 1
    assert max(event_counts(r, exp).values()) == 1
    for m in st["members"]:
        assert sorted(s for (mm, s) in counts if mm == m["id"]) == list(range(m["seq"] + 1))
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action == "exploit"]
    assert exploits, "PBT on the toy problem must exploit at least once"
    assert all(rec.parent and rec.parent != rec.member for rec in exploits)

    baseline = run_toy(fleet, redis_url, s3_url, "exploit.rule=none", "explore.rule=none")
    base = status(redis_url, baseline)
    assert not [rec for rec in records(r, baseline) if rec.action == "exploit"]
    assert base["best"]["score"] < 0.4  # h = [1,0] or [0,1] alone: Q = 1.2 - 0.81
    assert st["best"]["score"] > base["best"]["score"] + 0.3, (st["best"], base["best"])


def test_killing_an_arbiter_mid_run_loses_nothing(fleet, redis_url, r, tmp_path):
    store = f"file://{tmp_path / 'ckpt'}"
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    fleet.start("arbiter", "a1", "--claim-idle-ms", "1000")
    fleet.start("arbiter", "a2", "--claim-idle-ms", "1000")
    exp = launch(redis_url, store, "population.size=4", "stop.steps=160", "trainable_args.delay_s=0.01")
    k = Keys(exp)
    deadline = time.monotonic() + 60
    while r.xlen(k.lineage) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.xlen(k.lineage) >= 12, fleet.all_logs()
    fleet.kill("a1")  # SIGKILL: whatever it had read but not acknowledged is pending
    killed_at = r.xlen(k.lineage)

    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, f"{res.stderr}\n{fleet.all_logs()}"
    st = status(redis_url, exp)
    assert all(m["state"] == "done" and m["scored_step"] == 160 for m in st["members"])
    assert r.xlen(k.lineage) > killed_at
    assert max(lineage_counts(r, exp).values()) == 1
    assert max(event_counts(r, exp).values()) == 1, "a segment ran twice"
    assert r.xpending(k.events, "arbiters")["pending"] == 0


def test_status_json_and_stop(fleet, redis_url, r, tmp_path):
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=3")
    st = status(redis_url, exp)
    assert st["state"] == "running" and st["best"] is None
    assert [m["id"] for m in st["members"]] == ["m000", "m001", "m002"]
    assert {"id", "state", "step", "score", "hparams", "worker"} <= set(st["members"][0])
    assert st["members"][0]["hparams"] == {"h0": 1.0, "h1": 0.0}

    res = pbt("stop", exp, "--redis", redis_url)
    assert res.returncode == 0 and "stopped" in res.stdout
    res = pbt("wait", exp, "--timeout", "5", "--redis", redis_url)
    assert res.returncode == 1  # stopped is not done
    # a worker started now skips the stopped experiment's queued segments
    fleet.start("worker", "w1", "--burst")
    assert fleet.procs["w1"].wait(timeout=60) == 0
    assert r.xlen(Keys(exp).events) == 0


def test_wait_times_out_with_124(redis_url, tmp_path):
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}")
    res = pbt("wait", exp, "--timeout", "0.5", "--redis", redis_url)
    assert res.returncode == 124
    assert "timed out" in res.stderr


def test_workers_time_share_the_population_and_may_join_and_leave(fleet, redis_url, r, tmp_path):
    from collections import defaultdict

    from pbt_mq.core.protocol import ReadyEvent

    fleet.start("arbiter", "a1")
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=6", "stop.steps=120",
                 "trainable_args.delay_s=0.02")
    k = Keys(exp)

    def members_of(worker: str) -> set[str]:
        evs = (ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(k.events))
        return {ev.member for ev in evs if ev.worker == worker}

    deadline = time.monotonic() + 60  # both first workers at work (one may start seconds after the other)
    while not (len(members_of("w1")) >= 2 and len(members_of("w2")) >= 2):
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.05)
    fleet.start("worker", "w3")  # joins mid-run
    fleet.kill("w1", sig=15)     # leaves mid-run: SIGTERM finishes its segment first
    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, fleet.all_logs()
    members_by_worker = defaultdict(set)
    for _, f in r.xrange(k.events):
        ev = ReadyEvent.decode(f[b"msg"])
        members_by_worker[ev.worker].add(ev.member)
    assert set(members_by_worker) == {"w1", "w2", "w3"}  # the late one took work too
    # 6 members on 2 workers: each trained several of them. (The late joiner may keep to one: a member
    # that continues stays on the worker that holds it live whenever no one waits in the shared queue.)
    assert len(members_by_worker["w1"]) >= 2 and len(members_by_worker["w2"]) >= 2, dict(members_by_worker)
    assert fleet.procs["w1"].returncode == 0
    assert max(event_counts(r, exp).values()) == 1
