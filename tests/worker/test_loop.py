"""The loop API (``pbt_mq.session()`` / ``run.report``) under real pbt-worker and pbt-arbiter processes.

``tests/loops.py:toy`` is the paper's toy as a plain function in the issue's shape; it logs every
assignment it is given, so each case of the semantics is checked against what the function saw
and against the experiment's streams.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import PAPER_INIT_4, ROOT, TOY, event_counts, launch, lineage_counts, pbt, status

import pbt_mq
from pbt_mq.core.ids import member_seed
from pbt_mq.core.keys import Keys
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.state.lineage import records
from pbt_mq.store import checkpoint
from pbt_mq.store.open import open_store
from pbt_mq.worker.session import SessionError

LOOP = "trainable=tests.loops:toy"


def entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def events(r, exp: str) -> list[ReadyEvent]:
    return [ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(Keys(exp).events)]


def wait_done(redis_url: str, exp: str, fleet, expect: int = 0, timeout: int = 150) -> dict:
    res = pbt("wait", exp, "--timeout", str(timeout), "--redis", redis_url, timeout=timeout + 30)
    assert res.returncode == expect, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    return status(redis_url, exp)


def test_session_outside_a_worker_is_a_clear_error():
    with pytest.raises(SessionError, match=r"outside a worker"):
        pbt_mq.session()


def test_import_pbt_mq_imports_no_torch():
    code = "import sys, pbt_mq; pbt_mq.session; pbt_mq.Run; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_a_plain_function_reaches_done_with_exploits_exactly_once_and_replays(fleet, redis_url, r, s3_url, tmp_path):
    """Population 4 on 2 workers: calls serve several members; exploits; export + replay of the best."""
    log = tmp_path / "calls.jsonl"
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, s3_url, LOOP, f"trainable_args.log={json.dumps(str(log))}", "population.size=4",
                 PAPER_INIT_4)
    st = wait_done(redis_url, exp, fleet)
    assert st["state"] == "done" and all(m["state"] == "done" and m["step"] == 100 for m in st["members"])
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action == "exploit"]
    assert exploits, "the toy's population must exploit"
    assert set(lineage_counts(r, exp).values()) == {1} and set(event_counts(r, exp).values()) == {1}  # exactly once
    seen = entries(log)
    assignments = [e for e in seen if "member" in e]
    assert len(assignments) == sum(1 for _ in events(r, exp))  # one assignment per segment, none lost or doubled
    calls = Counter(e["call"] for e in assignments)
    assert any(len({e["member"] for e in assignments if e["call"] == c}) > 1 for c in calls), \
        "a call must serve more than one member (population > workers)"
    # every assignment is what the member's segment command said: member, seed, hparams, step
    cfg_seed = 0
    for e in assignments:
        assert e["seed"] == member_seed(cfg_seed, e["member"]) and e["device"] == "cpu"
    # after an exploit, the assignment carries the donor's checkpoint at the donor's step, with new hparams
    for rec in exploits:
        nxt = [e for e in assignments if e["member"] == rec.member and e["step"] == rec.parent_step
               and e["hparams"] == rec.next_hparams]
        assert any(e["state"] == {"member": rec.parent, "step": rec.parent_step} for e in nxt), (rec, nxt)
    # export the best and replay it through the same function: identical scores and state
    out = tmp_path / "best"
    res = pbt("export", exp, "--best", "-o", str(out), "--redis", redis_url)
    assert res.returncode == 0, res.stderr
    sched = json.loads((out / "schedule.json").read_text())
    assert sched["trainable"] == "tests.loops:toy" and any(s["start"]["kind"] == "exploit" for s in sched["segments"])
    res = pbt("replay", str(out), "--check", "--json", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    got = json.loads(res.stdout)
    assert got["exact"] and got["same_state"] is True
    assert got["final_score"] == st["best"]["score"]


def test_assignments_fresh_cold_warm_another_member_and_done(fleet, redis_url, r, tmp_path):
    """One worker, three members: the FIFO queue interleaves them, so one call serves them all."""
    log = tmp_path / "calls.jsonl"
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    store = f"file://{tmp_path / 'ckpt'}"
    exp = launch(redis_url, store, LOOP, f"trainable_args.log={json.dumps(str(log))}", "population.size=3",
                 "population.initial=[]", "exploit.rule=none", "stop.steps=12")
    wait_done(redis_url, exp, fleet)
    seen = entries(log)
    calls: dict[str, list[dict]] = {}
    for e in seen:
        calls.setdefault(e["call"], []).append(e)
    firsts = [c[0] for c in calls.values()]
    assert all(f["state"] is None and f["step"] == 0 for f in firsts)  # each call starts fresh
    assert len(calls) == 3  # a fresh start of another member ends the call serving the previous one...
    for c in list(calls.values())[:2]:
        assert c[-1].get("done") is True  # ...with run.done, and the function returned
    last = list(calls.values())[-1]
    later = [e for e in last if "member" in e][1:]
    assert {e["member"] for e in later} == {"m000", "m001", "m002"}  # the last call serves every member
    switched = [e for prev, e in zip(last, last[1:], strict=False) if "member" in e and e["member"] != prev.get("member")]
    assert switched and all(e["state"] == {"member": e["member"], "step": e["step"]} for e in switched)  # its checkpoint
    assert all(e["seed"] == member_seed(0, e["member"]) for e in later)
    evs = {(e.member, e.step): e for e in events(r, exp)}
    assert sum("cold" in ev.timings_s or "cached" in ev.timings_s for ev in evs.values()) == len(switched)
    # report() serialized the state before it returned: the stamp changed after report is not in any checkpoint
    store_ = open_store(store)
    for ev in evs.values():
        ck = checkpoint.load(store_, ev.checkpoint)
        assert int(ck["state"]["stamp"]) == ev.step and ck["state"]["owner"] == {"member": ev.member, "step": ev.step}
    # another experiment's work ends the live call too; a member alone continues warm: state None
    exp2 = launch(redis_url, store, LOOP, f"trainable_args.log={json.dumps(str(log))}", "population.size=1",
                  "population.initial=[]", "stop.steps=12")
    wait_done(redis_url, exp2, fleet)
    after = entries(log)[len(seen):]
    assert after[0].get("done") is True and after[0]["call"] == list(calls)[-1]
    assert [(e["member"], e["step"], e["state"]) for e in after[1:]] == [("m000", 0, None), ("m000", 4, None),
                                                                         ("m000", 8, None)]
    assert len({e["call"] for e in after[1:]}) == 1
    assert all("warm" in ev.timings_s for ev in events(r, exp2)[1:])


def test_a_cold_first_assignment_and_sigterm_ends_the_call(fleet, redis_url, r, tmp_path):
    """--live-models 0: every segment is a new call, started cold from the member's checkpoint.
    SIGTERM lets the segment finish; the call sees run.done and returns; the worker exits 0."""
    log = tmp_path / "calls.jsonl"
    fleet.start("worker", "w1", "--live-models", "0")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", LOOP, f"trainable_args.log={json.dumps(str(log))}",
                 "population.size=1", "population.initial=[]", "trainable_args.delay_s=0.05", "stop.steps=200")
    deadline = time.monotonic() + 60
    while len([e for e in entries(log) if "member" in e]) < 3:
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.05)
    fleet.kill("w1", signal.SIGTERM)
    assert fleet.procs["w1"].returncode == 0, fleet.log("w1")
    seen = entries(log)
    firsts = [e for e in seen if "member" in e]
    assert firsts[0]["state"] is None and all(e["state"] == {"member": "m000", "step": e["step"]} for e in firsts[1:])
    assert len({e["call"] for e in firsts}) == len(firsts)  # a call per segment
    assert seen[-1].get("done") is True  # the last call returned after run.done
    evs = events(r, exp)
    assert len(evs) == len(firsts)  # the segment in flight at SIGTERM finished and was published
    assert r.hget(Keys(exp).member("m000"), "state") in (b"queued", b"ready")


def test_misuse_fails_like_a_raising_train(fleet, redis_url, r, tmp_path):
    """Each member misuses the API its own way: each is retried once, then failed with a clear reason."""
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    ways = {"m000": ("no-metric", "but the experiment's metric is 'q'"),
            "m001": ("wrong-step", "report at step 4, when run.should_report(step) turns true"),
            "m002": ("return-early", "returned while run.done was false")}
    table = "{" + ",".join(f"{m}={w!r}" for m, (w, _) in ways.items()) + "}"
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", LOOP, f"trainable_args.misuse={table}",
                 "population.size=3", "population.initial=[]", "exploit.rule=none", "worker.max_retries=1",
                 "worker.on_failure=fail", "stop.steps=8")
    st = wait_done(redis_url, exp, fleet, expect=1)
    assert st["state"] == "failed"
    for m, (_, message) in ways.items():
        h = r.hgetall(Keys(exp).member(m))
        assert h[b"state"] == b"failed" and message in h[b"error"].decode(), (m, h[b"error"].decode())
        assert h[b"attempt"] == b"1"  # retried once, then failed


def test_a_report_after_done_is_charged_to_the_member_whose_call_it_was(fleet, redis_url, r, tmp_path):
    """m000's call gets done when m001's fresh start arrives, then reports again: the error is m000's (said
    on it, and by pbt status), and m001's segment, which starts a call of its own, is not charged for it."""
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", LOOP, "trainable_args.misuse='report-after-done'",
                 "population.size=2", "population.initial=[]", "exploit.rule=none", "worker.max_retries=1",
                 "worker.on_failure=fail", "stop.steps=8")
    st = wait_done(redis_url, exp, fleet)
    assert [m["state"] for m in st["members"]] == ["done", "done"], st
    assert r.hget(Keys(exp).member("m001"), "attempt") in (None, b"0")  # never charged, never retried
    error = r.hget(Keys(exp).member("m000"), "error").decode()
    assert "failed after its run was done: SessionError: report() after run.done" in error and "loops.py:" in error
    assert "m000 is done, but its call of tests.loops:toy failed" in pbt("status", exp, "--redis", redis_url).stdout


def test_a_segment_timeout_applies_to_a_function(fleet, redis_url, r, tmp_path):
    # --threads imports torch at start: an import of torch the 1 s timeout interrupts may swallow it
    fleet.start("worker", "w1", "--threads", "1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.loops:sleeper", "population.size=1",
                 "population.initial=[]", "worker.segment_timeout_s=1", "worker.max_retries=0",
                 "trainable_args.seconds=20")
    st = wait_done(redis_url, exp, fleet, expect=1, timeout=60)
    assert st["members"][0]["state"] == "failed"
    err = r.hget(Keys(exp).member("m000"), "error").decode()
    assert "JobTimeoutException" in err or "timeout" in err.lower(), err
    assert r.exists("pbt:worker:w1")  # the worker lives on (heartbeats) after abandoning the call


def test_should_report_by_seconds(fleet, redis_url, r, tmp_path):
    log = tmp_path / "calls.jsonl"
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    toml = tmp_path / "by_time.toml"
    toml.write_text(Path(TOY).read_text().replace("[ready]\nsteps = 4", "[ready]\nseconds = 0.1"))
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.loops:by_time",
                 f"trainable_args.log={json.dumps(str(log))}", "population.size=1", "population.initial=[]",
                 "stop.steps=60", file=str(toml))
    wait_done(redis_url, exp, fleet)
    seen = entries(log)
    assert len(seen) >= 2 and all(e["elapsed"] >= 0.1 and e["step"] > e["start"] for e in seen)
    assert all(a["step"] == b["start"] for a, b in zip(seen, seen[1:], strict=False))


def test_an_abandoned_call_is_said_once_and_its_late_report_reaches_no_later_segment(fleet, redis_url, r, tmp_path):
    """The first call overruns its segment's timeout and reports 5 s in, while the retry's call is
    training the same member: that report is refused; every event comes from the new call."""
    log = tmp_path / "calls.jsonl"
    fleet.start("worker", "w1", "--threads", "1")  # imports torch at start: no timeout in the middle of that
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.loops:overrun", "population.size=1",
                 "population.initial=[]", "worker.segment_timeout_s=2", "worker.max_retries=1", "stop.steps=48",
                 f"trainable_args.log={json.dumps(str(log))}")
    st = wait_done(redis_url, exp, fleet, timeout=90)
    assert st["members"][0]["state"] == "done"
    deadline = time.monotonic() + 30
    while not entries(log):  # the abandoned thread wakes up on its own time
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.1)
    (late,) = entries(log)
    assert late["late"] == "refused" and "abandoned" in late["error"], late
    evs = r.xrange(Keys(exp).events)
    assert [ReadyEvent.decode(f[b"msg"]).metrics["q"] for _, f in evs] == [1.0] * 12  # none from the late report
    assert set(event_counts(r, exp).values()) == {1}
    assert int(evs[0][0].split(b"-")[0]) / 1000 < late["t"] < int(evs[-1][0].split(b"-")[0]) / 1000  # it overlapped
    warned = [line for line in fleet.log("w1").splitlines() if "abandoned" in line]
    assert len(warned) == 1 and " m000 " in warned[0] and "tests.loops:overrun" in warned[0], warned


def test_train_s_counts_the_loop_not_the_setup_before_it(fleet, redis_url, r, tmp_path):
    """A function that takes 2 s to build its model: its first segment's training seconds (what
    [ready] seconds and time boards use) exclude them; they are counted as loading."""
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", LOOP, "trainable_args.setup_s=2.0", "population.size=1",
                 "population.initial=[]", "stop.steps=8")
    wait_done(redis_url, exp, fleet)
    first, second = events(r, exp)
    assert first.timings_s["load"] >= 2.0 and "fresh" in first.timings_s
    assert first.train_s == first.timings_s["train"] < 2.0, first.timings_s
    assert second.train_s == pytest.approx(first.train_s + second.timings_s["train"])
