"""Issue 27 on real processes: a population larger than the fleet continues without downloads
(each worker keeps the checkpoints it wrote in memory and takes the segments that start from them
first), and a worker's cache stays within its bound however many members pass through it."""

from __future__ import annotations

import time

from helpers import launch, pbt

from pbt_mq.core.keys import Keys, worker_key
from pbt_mq.core.model import Heartbeat, Lineage, Meta
from pbt_mq.observe.stats import experiment_stats
from pbt_mq.state.lineage import records


def wait_done(redis_url: str, exp: str, fleet, timeout: int = 150) -> None:
    res = pbt("wait", exp, "--timeout", str(timeout), "--redis", redis_url, timeout=timeout + 30)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"


def start_kinds(recs: list[Lineage], action: str) -> list[str]:
    """How each segment decided with ``action`` started (read from the next record of its member)."""
    by = {(r.member, r.seq): r for r in recs}
    out = []
    for r in recs:
        nxt = by.get((r.member, r.seq + 1))
        if r.action == action and nxt is not None and nxt.timings:
            out.append(next((k for k in ("warm", "cached", "cold") if k in nxt.timings), "?"))
    return out


def test_a_population_larger_than_the_fleet_continues_without_downloads(fleet, redis_url, r, s3_url):
    for w in ("w1", "w2"):
        fleet.start("worker", w, "--heartbeat-s", "0.2", "--affinity-wait-ms", "30000")
    fleet.start("arbiter", "a1")
    # 8 members on 2 workers, a real S3 store, exploits on; segments of 20 ms, so the queue is never empty
    exp = launch(redis_url, s3_url, "population.size=8", "population.initial=[]", "stop.steps=64",
                 "trainable_args.delay_s=0.02", "exploit.quantile=0.25")
    wait_done(redis_url, exp, fleet)
    st = experiment_stats(r, exp)
    assert st["segments"] > 100 and st["starts"].get("fresh") == 8, st  # (an exploit may copy a member ahead)
    assert st["no_download_fraction"] >= 0.8, st  # with one shared first-in, first-out queue: about half
    recs = records(r, exp)
    exploits = start_kinds(recs, "exploit")
    assert exploits and exploits.count("cold") <= len(exploits) / 2, exploits  # the donor's worker holds it
    time.sleep(0.5)  # a beat after the last segment
    out = pbt("stats", exp, "--redis", redis_url).stdout
    assert "build " in out and "continuing segments that started without a download: " in out, out
    beats = {w: Heartbeat.read(r, worker_key(w)) for w in ("w1", "w2")}
    assert 0 < sum(b.cached for b in beats.values()) <= st["starts"].get("cached", 0), beats  # (beats lag)
    assert all(0 < b.cache_bytes <= b.cache_limit for b in beats.values()), beats


def test_a_workers_cache_stays_within_its_bound_under_a_hundred_members(fleet, redis_url, r, tmp_path):
    limit = 1 << 20
    fleet.start("worker", "w1", "--cache-mb", "1", "--heartbeat-s", "0.05")
    fleet.start("arbiter", "a1")
    # 100 members of 64 KB each (6.4 MB of checkpoints) through a cache of 1 MiB
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.trainables:Padded",
                 "trainable_args.pad_kb=64", "population.size=100", "population.initial=[]", "stop.steps=12")
    seen: list[Heartbeat] = []
    deadline = time.monotonic() + 150
    while not ((st := Meta.read(r, Keys(exp).meta, "state").state) is not None and st.ended):
        seen.append(Heartbeat.read(r, worker_key("w1")))
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.02)
    time.sleep(0.2)  # a beat after the last segment: the cache still holds what it held
    seen.append(Heartbeat.read(r, worker_key("w1")))
    assert max(b.cache_bytes for b in seen) <= limit == seen[-1].cache_limit
    assert max(b.cache_bytes for b in seen) > limit // 2  # it was used, up to its bound
    st = experiment_stats(r, exp)
    assert st["segments"] == 300 and st["starts"].get("cold", 0) > 0, st  # more members than it holds: downloads
