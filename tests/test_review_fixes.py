"""Regression tests for races and strandings found in review."""

from __future__ import annotations

import time

from helpers import TOY

from pbt_mq.arbiter import Arbiter
from pbt_mq.bench_control import fake_event, publish, take_commands
from pbt_mq.config import load_file
from pbt_mq.experiment import launch, stop
from pbt_mq.keys import Keys
from pbt_mq.protocol import ReadyEvent
from pbt_mq.reaper import find_orphans, requeue
from pbt_mq.segment import Runtime


def test_a_superseded_worker_does_not_publish_over_the_requeued_copy(r, tmp_path):
    cfg = load_file(TOY, ["population.size=1", "population.initial=[]"])
    exp = launch(r, cfg, f"file://{tmp_path}")
    k = Keys(exp)
    cmd = take_commands(r)[0]
    first_job = r.hget(k.member("m000"), "job").decode()
    r.hset(k.member("m000"), mapping={"state": "running", "worker": "ghost", "started_ms": 0})
    orphan = find_orphans(r, exp, cfg, grace_ms=0)[0]
    assert requeue(r, exp, cfg, orphan) == "requeued"  # the ghost "died"; a copy is queued
    rt = Runtime(r, "ghost")
    assert rt._publish(k, cmd, first_job, fake_event(cmd, 1.0)) == "superseded"  # ...but the ghost was alive
    assert r.xlen(k.events) == 0 and r.hget(k.member("m000"), "state") == b"queued"


def test_the_reap_count_is_per_segment(r, tmp_path):
    cfg = load_file(TOY, ["population.size=1", "population.initial=[]"])
    exp = launch(r, cfg, f"file://{tmp_path}")
    k = Keys(exp)
    r.hset(k.member("m000"), mapping={"state": "running", "worker": "ghost", "started_ms": 0})
    requeue(r, exp, cfg, find_orphans(r, exp, cfg, grace_ms=0)[0])
    assert r.hget(k.member("m000"), "reaped") == b"1"
    cmd = take_commands(r)[0]
    r.hset(k.member("m000"), "state", "ready")
    publish(r, fake_event(cmd, 1.0))
    Arbiter(r, "a", block_ms=10, reap_interval_s=0).run(burst=True)
    assert r.hget(k.member("m000"), "reaped") == b"0"


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


def test_stop_never_overwrites_done(r, tmp_path):
    cfg = load_file(TOY, [])
    exp = launch(r, cfg, f"file://{tmp_path}")
    r.hset(Keys(exp).meta, "state", "done")
    assert stop(r, exp) is False
    assert r.hget(Keys(exp).meta, "state") == b"done"


def test_a_segment_ending_after_its_experiment_leaves_no_checkpoint_behind(fleet, redis_url, r, tmp_path):
    from helpers import launch as launch_cli
    from helpers import pbt

    from pbt_mq.store import open_store

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
