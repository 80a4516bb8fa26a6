"""pbt-worker as a real process: warm reuse, failures and retries, heartbeats, refused jobs."""

from __future__ import annotations

import threading
import time
import zlib

import msgpack
from helpers import PAPER_INIT_4, TOY, launch, pbt, status
from rq import Queue

from pbt_mq.broker.jobs import MsgpackSerializer
from pbt_mq.config.parse import load_file
from pbt_mq.control.reaper import find_orphans, requeue
from pbt_mq.core.keys import Keys, worker_key
from pbt_mq.core.protocol import CheckpointRef, ReadyEvent
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.state.lineage import records
from pbt_mq.store import checkpoint
from pbt_mq.store.open import open_store
from pbt_mq.tools.bench.control import fake_event, take_commands
from pbt_mq.worker.runtime import Runtime
from pbt_mq.worker.uploads import await_upload


def events(r, exp: str) -> list[ReadyEvent]:
    return [ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(Keys(exp).events)]


def wait_done(redis_url: str, exp: str, fleet, expect: int = 0) -> dict:
    res = pbt("wait", exp, "--timeout", "120", "--redis", redis_url, timeout=150)
    assert res.returncode == expect, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    return status(redis_url, exp)


def test_a_continuing_member_is_served_warm(fleet, redis_url, r, s3_url):
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, s3_url, "population.size=1", "population.initial=[{h0=0.5,h1=0.5}]")
    wait_done(redis_url, exp, fleet)
    evs = sorted(events(r, exp), key=lambda e: e.seq)
    assert len(evs) == 25
    assert "fresh" in evs[0].timings_s
    assert all("warm" in e.timings_s for e in evs[1:]), [sorted(e.timings_s) for e in evs]
    assert all(e.timings_s["load"] < 0.5 for e in evs[1:])  # sanity, not a benchmark
    assert evs[-1].step == 100 and evs[-1].score > 1.19


def test_continuing_members_stay_on_the_worker_that_holds_them(fleet, redis_url, r, tmp_path):
    # Instant segments on two idle workers: with one shared FIFO queue, about half of the
    # continuing segments would land on the other worker and start cold.
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    fleet.start("arbiter", "a1")
    deadline = time.monotonic() + 60  # both at work before the first job: else one may run two fresh starts
    while not (r.exists(worker_key("w1")) and r.exists(worker_key("w2"))):
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.05)
    exp = launch(redis_url, f"file://{tmp_path}/ckpt", "exploit.rule=none", "stop.steps=60")
    wait_done(redis_url, exp, fleet)
    evs = events(r, exp)
    assert len(evs) == 30
    later = [e for e in evs if e.seq > 0]
    assert all("warm" in e.timings_s for e in later), [(e.member, e.seq, e.worker, sorted(e.timings_s)) for e in later]
    for m in ("m000", "m001"):
        assert len({e.worker for e in later if e.member == m}) == 1


def test_overlapped_uploads_lose_nothing(fleet, redis_url, r, s3_url):
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, s3_url, "population.size=4", PAPER_INIT_4, "worker.overlap_upload=true")
    st = wait_done(redis_url, exp, fleet)
    assert st["state"] == "done"
    k = Keys(exp)
    assert r.zcard(k.uploading) == 0  # every upload landed and was moved to "stored"
    assert any(rec.action == "exploit" for rec in records(r, exp))
    store = open_store(s3_url)
    for m in ("m000", "m001", "m002", "m003"):
        h = r.hgetall(k.member(m))
        ref = CheckpointRef(h[b"ckpt_key"].decode(), h[b"ckpt_sha256"].decode(), int(h[b"ckpt_size"]))
        assert checkpoint.load(store, ref)["step"] == 100
    assert "recover" not in fleet.log("w1") + fleet.log("w2")


def test_a_download_waits_for_an_upload_in_flight(r):
    k = Keys("exp-x")
    r.zadd(k.uploading, {"exp-x/m000/1.pt": 1})
    landed = threading.Timer(0.2, lambda: r.zrem(k.uploading, "exp-x/m000/1.pt"))
    landed.start()
    assert await_upload(r, "exp-x", "exp-x/m000/1.pt") is True
    landed.join()  # its reply read before the fixture closes the connection
    assert r.zscore(k.uploading, "exp-x/m000/1.pt") is None
    assert await_upload(r, "exp-x", "exp-x/m000/2.pt") is False  # not uploading: really missing


def test_a_failing_member_is_retried_then_marked_failed_and_the_rest_go_on(fleet, redis_url, r, tmp_path):
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(
        redis_url, f"file://{tmp_path}/ckpt", "trainable=tests.trainables:FailsWhenH0High",
        "worker.max_retries=1", "exploit.rule=none", "stop.steps=20", "worker.on_failure=fail",
    )
    st = wait_done(redis_url, exp, fleet)
    m0, m1 = st["members"]
    assert m0["state"] == "failed" and "boom: h0=1.0" in m0["error"]
    assert m1["state"] == "done" and m1["scored_step"] == 20
    assert st["state"] == "done" and "1 failed" in st["reason"]
    assert r.hget(Keys(exp).member("m000"), "attempt") == b"1"
    assert "m000" not in {m.decode() for m in r.zrange(Keys(exp).scores, 0, -1)}


def test_every_member_failing_fails_the_experiment(fleet, redis_url, tmp_path):
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(
        redis_url, f"file://{tmp_path}/ckpt", "trainable=tests.trainables:FailsWhenH0High",
        "worker.max_retries=0", "population.initial=[{h0=1.0,h1=0.0},{h0=0.95,h1=1.0}]", "worker.on_failure=fail",
    )
    st = wait_done(redis_url, exp, fleet, expect=1)
    assert st["state"] == "failed" and st["reason"].startswith("every member failed; m000: RuntimeError: boom: h0=1.0")


def test_heartbeat_key_expires_with_the_worker(fleet, redis_url, r):
    fleet.start("worker", "hb1", "--heartbeat-s", "0.5")
    deadline = time.monotonic() + 30
    while not r.exists(worker_key("hb1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    beat = r.hgetall(worker_key("hb1"))
    assert beat[b"queue"] == b"pbt" and int(beat[b"pid"]) == fleet.procs["hb1"].pid
    assert 0 < r.pttl(worker_key("hb1")) <= 1500  # three beats
    fleet.kill("hb1")
    deadline = time.monotonic() + 10  # gone after its TTL (1.5 s), polled rather than slept
    while r.exists(worker_key("hb1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not r.exists(worker_key("hb1"))


def test_a_worker_restarted_under_its_id_after_sigkill_starts_and_a_live_id_is_refused(fleet, redis_url, r, tmp_path):
    fleet.start("worker", "pod-0", "--heartbeat-s", "4")  # it outlives its SIGKILL by 12 s: time to restart under load
    deadline = time.monotonic() + 30
    while not r.exists(worker_key("pod-0")) and time.monotonic() < deadline:
        time.sleep(0.05)
    twin = pbt("worker", "--redis", redis_url, "--id", "pod-0", "--burst", timeout=60)
    assert twin.returncode == 1 and "worker id 'pod-0' is in use" in twin.stderr, twin.stderr
    fleet.kill("pod-0")  # SIGKILL: its heartbeat lives on for three beats
    assert r.exists(worker_key("pod-0"))
    assert not r.exists("rq:worker:pod-0")  # its job loop is pbt-mq's: no RQ worker registration to clear
    r.hset("rq:worker:pod-0", "name", "pod-0")  # but one a previous release's worker left is cleared
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path}/ckpt", "stop.steps=8")
    again = pbt("worker", "--redis", redis_url, "--id", "pod-0", "--burst", timeout=120)  # at once: it waits
    assert again.returncode == 0, again.stderr
    assert "waiting for it to expire" in again.stderr
    assert "There exists an active worker" not in again.stderr
    assert wait_done(redis_url, exp, fleet)["state"] == "done"


def test_a_job_naming_another_function_is_refused(fleet, redis_url, r, tmp_path):
    marker = tmp_path / "pwned"
    q = Queue("pbt", connection=r, serializer=MsgpackSerializer)
    q.enqueue("os.system", f"touch {marker}")
    r.rpush("rq:queue:pbt", "no-such-job")
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path}/ckpt", "stop.steps=8")
    st = wait_done(redis_url, exp, fleet)  # the worker survived and ran the real experiment
    assert st["state"] == "done"
    assert not marker.exists()
    assert "refusing to run 'os.system'" in fleet.log("w1")


def test_a_pickled_job_is_never_unpickled(fleet, redis_url, r, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    r.hset("rq:job:evil", mapping={"data": pickle.dumps(Evil()), "status": "queued", "origin": "pbt"})
    r.rpush("rq:queue:pbt", "evil")
    r.hset("rq:job:evil2", mapping={"data": msgpack.packb(["os.system", None, ["id"], {}]), "origin": "pbt"})
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path}/ckpt", "stop.steps=8")
    assert wait_done(redis_url, exp, fleet)["state"] == "done"
    assert not marker.exists()


def test_forged_jobs_are_dead_lettered_with_the_reason(fleet, redis_url, r, tmp_path):
    import pickle

    from pbt_mq.core.keys import DEAD

    q = Queue("pbt", connection=r, serializer=MsgpackSerializer)
    q.enqueue("os.system", "true")
    r.hset("rq:job:pickled", mapping={"data": pickle.dumps({"x": 1}), "status": "queued", "origin": "pbt"})
    r.rpush("rq:queue:pbt", "pickled")
    bomb = zlib.compress(b"\0" * (256 << 20), 9)  # 256 MiB once inflated, 250 KB in Redis
    r.hset("rq:job:bomb", mapping={"data": bomb, "status": "queued", "origin": "pbt"})
    r.rpush("rq:queue:pbt", "bomb")
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path}/ckpt", "stop.steps=8")
    assert wait_done(redis_url, exp, fleet)["state"] == "done"
    dead = {f[b"entry"].decode(): f[b"reason"].decode() for _, f in r.xrange(DEAD)}
    assert any("refusing to run 'os.system'" in reason for reason in dead.values()), dead
    assert "looks like a Python pickle" in dead["pickled"], dead
    assert "inflates past 4 MiB; refused unread" in dead["bomb"], dead


def test_a_superseded_worker_does_not_publish_over_the_requeued_copy(r, tmp_path):
    cfg = load_file(TOY, ["population.size=1", "population.initial=[]"])
    exp = launch_in_process(r, cfg, f"file://{tmp_path}")
    k = Keys(exp)
    cmd = take_commands(r)[0]
    first_job = r.hget(k.member("m000"), "job").decode()
    r.hset(k.member("m000"), mapping={"state": "running", "worker": "ghost", "started_ms": 0})
    orphan = find_orphans(r, exp, cfg, grace_ms=0)[0]
    assert requeue(r, exp, cfg, orphan) == "requeued"  # the ghost "died"; a copy is queued
    rt = Runtime(r, "ghost")
    assert rt._publish(k, cmd, first_job, fake_event(cmd, 1.0)) == "superseded"  # ...but the ghost was alive
    assert r.xlen(k.events) == 0 and r.hget(k.member("m000"), "state") == b"queued"


def test_an_event_the_arbiter_would_reject_fails_the_segment_instead_of_stranding_the_member(fleet, redis_url, r, tmp_path):
    from helpers import launch as cli_launch
    from helpers import pbt

    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = cli_launch(redis_url, f"file://{tmp_path}/ckpt", "trainable=tests.trainables:TooManyMetrics",
                     "worker.max_retries=0")
    res = pbt("wait", exp, "--timeout", "60", "--redis", redis_url, timeout=90)
    assert res.returncode == 1  # every member failed: the experiment failed, it did not hang
    err = r.hget(Keys(exp).member("m000"), "error").decode()
    assert "metrics: 301 entries exceeds the limit of 256" in err


def test_a_segment_ending_after_its_experiment_leaves_no_checkpoint_behind(fleet, redis_url, r, tmp_path):
    from helpers import launch as launch_cli
    from helpers import pbt

    from pbt_mq.store.open import open_store

    store_url = f"file://{tmp_path / 'ckpt'}"
    fleet.start("worker", "w1")
    fleet.start("arbiter", "a1")
    exp = launch_cli(redis_url, store_url, "population.size=1", "population.initial=[]", "trainable_args.delay_s=1.5")
    k = Keys(exp)
    deadline = time.monotonic() + 60
    while not (r.hget(k.member("m000"), "state") == b"running" and int(r.hget(k.member("m000"), "seq")) >= 1):
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.05)
    assert pbt("stop", exp, "--redis", redis_url).returncode == 0
    while "the experiment ended; result dropped" not in fleet.log("w1"):
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.1)
    published = {ReadyEvent.decode(f[b"msg"]).checkpoint.key for _, f in r.xrange(k.events)}
    stored = set(open_store(store_url).list())
    assert stored <= published, stored - published  # the dropped segment's checkpoint is gone
    assert r.zcard(k.uploading) == 0
