"""Redis bounded per experiment: the lineage beyond ``[lineage] redis_window`` moves to the store,
decided events and finished jobs leave Redis within seconds, and every reader sees the same log."""

from __future__ import annotations

import json
import threading
import time

import pytest
from helpers import PAPER_INIT_4, launch, pbt

from pbt_mq.config.reader import ConfigError
from pbt_mq.core.keys import Keys
from pbt_mq.dashboard.follow import LineageLog
from pbt_mq.state.archive import Chunk, archive, read
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.store.open import open_store


def run_toy(fleet, redis_url: str, store: str, *sets: str, arbiter_args: tuple[str, ...] = ()) -> str:
    fleet.start("worker", "w1")
    fleet.start("worker", "w2")
    fleet.start("arbiter", "a1", "--reap-interval-ms", "200", *arbiter_args)
    exp = launch(redis_url, store, "population.size=4", PAPER_INIT_4, "stop.steps=120", *sets)
    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    return exp


def views(redis_url: str, r, exp: str, tmp, tag: str) -> dict:
    """What every reader of the log shows: lineage --json, --records, the export's schedule, replay."""
    lin = pbt("lineage", exp, "--json", "--redis", redis_url)
    recs = pbt("lineage", exp, "--records", "--redis", redis_url)
    out = tmp / f"export-{tag}"
    exp_res = pbt("export", exp, "--best", "-o", str(out), "--redis", redis_url)
    stats = pbt("stats", exp, "--json", "--redis", redis_url)
    for res in (lin, recs, exp_res, stats):
        assert res.returncode == 0, res.stderr
    st = json.loads(stats.stdout)
    return {"lineage": json.loads(lin.stdout), "records": recs.stdout,
            "schedule": json.loads((out / "schedule.json").read_text()),
            "replay": replay_decisions(load_config(r, exp), records(r, exp)),
            "stats": (st["segments"], st["decisions"], st["actions"], st["phases_s"])}


def test_an_archived_experiment_reads_exactly_as_before(fleet, redis_url, r, tmp_path):
    store = f"file://{tmp_path / 'ckpt'}"
    exp = run_toy(fleet, redis_url, store)  # the default window: nothing archived
    k = Keys(exp)
    total = r.xlen(k.lineage)
    assert total > 40 and r.llen(k.archive) == 0
    before = views(redis_url, r, exp, tmp_path, "before")
    assert before["replay"] == [] and len(before["records"].splitlines()) == total

    moved = archive(r, open_store(store), exp, window=10, chunk_records=7)
    assert moved == (total - 10) // 7 * 7 and r.xlen(k.lineage) == total - moved < 17
    chunks = [Chunk.from_json(c) for c in r.lrange(k.archive, 0, -1)]
    assert sum(c.count for c in chunks) == moved and all(open_store(store).exists(c.key) for c in chunks)
    assert views(redis_url, r, exp, tmp_path, "after") == before
    follower = LineageLog(exp)  # pbt dashboard's: archived records first, then the stream, in bounded reads
    while follower.poll(r, 5):
        pass
    assert [n["q"] for n in follower.nodes] == [rec.seq for rec in records(r, exp)] and follower.archive_error is None
    # only the newer ones, across the archive's edge
    recs = read(r, exp)
    mid = recs[moved // 2].id
    assert [x.id for x in read(r, exp, after=mid)] == [x.id for x in recs[moved // 2 + 1:]]


def test_several_arbiters_archive_each_record_exactly_once(fleet, redis_url, r, tmp_path):
    store = f"file://{tmp_path / 'ckpt'}"
    exp = run_toy(fleet, redis_url, store)
    want = [rec.id for rec in records(r, exp)]
    barrier = threading.Barrier(4)
    moved: list[int] = []

    def archiver() -> None:
        s = open_store(store)
        barrier.wait()
        moved.append(archive(r, s, exp, window=5, chunk_records=3))

    threads = [threading.Thread(target=archiver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    chunks = [Chunk.from_json(c) for c in r.lrange(Keys(exp).archive, 0, -1)]
    assert sum(moved) == sum(c.count for c in chunks) == len(want) - r.xlen(Keys(exp).lineage)
    assert len({c.key for c in chunks}) == len(chunks)
    assert [rec.id for rec in records(r, exp)] == want  # none lost, none twice, in order


def test_the_arbiters_keep_redis_bounded_while_it_runs(fleet, redis_url, r, tmp_path):
    """A real run with a window of 8: its maintenance archives, trims decided events within seconds,
    empties the stream at the end, and finished segments' RQ jobs expire."""
    store = f"file://{tmp_path / 'ckpt'}"
    exp = run_toy(fleet, redis_url, store, "lineage.redis_window=8", "trainable_args.delay_s=0.01",
                  arbiter_args=("--events-retention-s", "0.5"))
    k = Keys(exp)
    deadline = time.monotonic() + 20
    while (r.xlen(k.events) or r.xlen(k.lineage) >= 16) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.xlen(k.events) == 0, fleet.all_logs()  # the experiment ended: its stream is empty
    assert 8 <= r.xlen(k.lineage) < 16 and r.llen(k.archive) > 0
    recs = records(r, exp)
    assert len({(rec.member, rec.seq) for rec in recs}) == len(recs) > 40
    assert replay_decisions(load_config(r, exp), recs) == []
    lines = pbt("lineage", exp, "--records", "--redis", redis_url).stdout.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [rec.id for rec in recs]
    assert all(rec.timings and "train" in rec.timings for rec in recs if rec.action != "failed")
    deadline = time.monotonic() + 15
    while list(r.scan_iter(f"rq:job:{exp}*")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert list(r.scan_iter(f"rq:job:{exp}*")) == []  # job hashes and results: gone within seconds


def test_a_window_too_small_for_pb2_is_refused():
    pytest.importorskip("numpy")
    from pbt_mq.config.parse import parse

    raw = {"trainable": "a:B", "metric": "q", "population": {"size": 2}, "ready": {"steps": 1},
           "stop": {"steps": 2}, "hparams": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
           "explore": {"rule": "pb2"}, "lineage": {"redis_window": 50}}
    with pytest.raises(ConfigError, match="lineage.redis_window: PB2 reads the newest 128"):
        parse(raw)
    raw["lineage"] = {"redis_window": 0}
    with pytest.raises(ConfigError, match="lineage.redis_window"):
        parse(raw)
