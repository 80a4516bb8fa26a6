"""Checkpoint GC keeps what is needed and bounds the store; corrupt checkpoints are recovered from."""

from __future__ import annotations

import time

from helpers import TOY, launch, pbt

from pbt_mq.broker.jobs import queue_for
from pbt_mq.config.parse import load_file
from pbt_mq.control.gc import collect, needed
from pbt_mq.core.keys import Keys
from pbt_mq.core.protocol import ReadyEvent, SegmentCommand
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.store.open import open_store
from pbt_mq.worker.runtime import Runtime


def run_queued(rt: Runtime, r) -> list[str]:
    """Run every queued segment in-process, as a worker would."""
    q = queue_for(r, "pbt")
    ran = []
    for jid in q.get_job_ids():
        cmd = SegmentCommand.decode(q.fetch_job(jid).args[0])
        q.remove(jid)
        rt.run(cmd, jid)
        ran.append(jid)
    return ran


def test_gc_keeps_every_needed_checkpoint_and_bounds_the_store(fleet, redis_url, r, tmp_path):
    store_url = f"file://{tmp_path / 'ckpt'}"
    fleet.start("arbiter", "a1", "--reap-interval-ms", "200")
    fleet.start("worker", "w1")
    fleet.start("worker", "w2")
    exp = launch(redis_url, store_url, "population.size=4", "stop.steps=120", "gc.min_age_s=30",
                 "gc.interval_s=0.2", "gc.lineage_depth=0", "trainable_args.delay_s=0.1")
    store = open_store(store_url)
    peak = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and r.hget(Keys(exp).meta, "state") == b"running":
        peak = max(peak, sum(1 for _ in store.list(f"{exp}/")))
        time.sleep(0.1)
    assert pbt("wait", exp, "--timeout", "60", "--redis", redis_url).returncode == 0, fleet.all_logs()
    written = r.xlen(Keys(exp).events)  # 30 per member, fewer for one an exploit moved to a donor's later checkpoint
    assert written >= 4 * 25  # many times the bound below
    assert peak <= 4 + 8, f"peak {peak} checkpoints stored for a population of 4"
    # after the final collection: each member's final checkpoint, nothing else (polled: it runs every 0.2 s)
    finals = {r.hget(Keys(exp).member(m), "ckpt_key").decode() for m in ("m000", "m001", "m002", "m003")}
    deadline = time.monotonic() + 15
    while len(left := set(store.list(f"{exp}/"))) > 4 + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert finals <= left and len(left) <= 4 + 2, (left, finals)
    for key in finals:
        assert store.exists(key)


def test_gc_never_deletes_a_queued_start_or_an_undecided_event(r, tmp_path):
    cfg = load_file(TOY, ["population.size=2", "gc.min_age_s=0"])
    store_url = f"file://{tmp_path}"
    exp = launch_in_process(r, cfg, store_url)
    rt = Runtime(r, "t")
    run_queued(rt, r)  # two events now sit undecided in the stream
    k = Keys(exp)
    keys = {ReadyEvent.decode(f[b"msg"]).checkpoint.key for _, f in r.xrange(k.events)}
    assert keys <= needed(r, exp, cfg)
    assert collect(r, exp, cfg, open_store(store_url)) == 0
    r.zadd(k.uploading, {f"{exp}/m000/999999-s0-deadbeef.pt": 0})  # an abandoned upload, never referenced
    (tmp_path / exp / "m000" / "999999-s0-deadbeef.pt").write_bytes(b"x")
    assert collect(r, exp, cfg, open_store(store_url)) == 1
    assert all(open_store(store_url).exists(key) for key in keys)


def test_a_corrupt_start_checkpoint_is_quarantined_and_the_member_recovers(r, tmp_path):
    from pbt_mq.control.arbiter import Arbiter

    cfg = load_file(TOY, ["population.size=2", "exploit.rule=none"])
    store_url = f"file://{tmp_path}"
    exp = launch_in_process(r, cfg, store_url)
    rt = Runtime(r, "t")
    run_queued(rt, r)
    Arbiter(r, "a", block_ms=10, reap_interval_s=0).run(burst=True)
    k = Keys(exp)
    bad = r.hget(k.member("m000"), "ckpt_key").decode()
    path = tmp_path / bad
    path.chmod(0o644)
    path.write_bytes(b"\x00" * 64)  # corrupt in place
    rt.live.clear()  # a cold worker must download it
    run_queued(rt, r)
    evs = {(e.member, e.seq): e for e in (ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(k.events))}
    rec = evs[("m000", 1)]
    assert "recovered" in rec.timings_s
    assert rec.start_key != bad and rec.start_key == evs[("m001", 0)].checkpoint.key
    assert rec.step == rec.start_step + 4
    dead = [f[b"reason"].decode() for _, f in r.xrange(k.dead)]
    assert any("bad checkpoint" in x and "sha256" in x for x in dead)


def test_by_default_the_best_members_whole_lineage_is_kept(fleet, redis_url, r, tmp_path):
    from pbt_mq.core.protocol import CheckpointRef
    from pbt_mq.state.lineage import ancestry, records

    store_url = f"file://{tmp_path / 'ckpt'}"
    fleet.start("arbiter", "a1", "--reap-interval-ms", "200")
    fleet.start("worker", "w1")
    exp = launch(redis_url, store_url, "population.size=4", "gc.interval_s=0.2", "stop.steps=60")
    assert pbt("wait", exp, "--timeout", "60", "--redis", redis_url).returncode == 0, fleet.all_logs()
    time.sleep(1.0)  # the final collection
    k = Keys(exp)
    best = r.zrevrange(k.scores, 0, 0)[0].decode()
    chain = ancestry(records(r, exp), r.hget(k.member(best), "ckpt_key").decode())
    store = open_store(store_url)
    assert len(chain) == 15
    by_key = {}
    for _, f in r.xrange(k.events):
        ev = ReadyEvent.decode(f[b"msg"])
        by_key[ev.checkpoint.key] = ev.checkpoint
    for rec in chain:
        ref: CheckpointRef = by_key[rec.ckpt_key]
        with store.fetch_verified(ref):  # exists and its sha256 matches
            pass
    assert sum(1 for _ in store.list(f"{exp}/")) < r.xlen(k.events)  # dead lineages were collected
