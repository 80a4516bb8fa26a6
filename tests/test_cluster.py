"""Redis Cluster: a real 3-master cluster on loopback runs toy experiments, each in its own slot.

Experiments are launched with ids whose hash tags land on different masters; real pbt-worker
and pbt-arbiter processes are pointed at one node and find the rest themselves.
"""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import (
    PAPER_INIT_4,
    SEGMENTS,
    TOY,
    early_decisions,
    event_counts,
    launch,
    lineage_counts,
    pbt,
    status,
    write_history,
)
from redis.crc import key_slot
from services import Dashboard, Fleet, RedisClusterNodes, redis_binary, unavailable

from pbt_mq.broker.cluster import ClusterClient, TransactionPipeline
from pbt_mq.broker.connect import connect
from pbt_mq.broker.jobs import TaggedSegmentJob
from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.dashboard.bands import LARGE_POPULATION, TOP_LINES
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.state.lineage import records

pytestmark = pytest.mark.xdist_group("cluster")  # (one module fixture: a 3-master cluster) on one pytest-xdist worker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    binary = redis_binary()
    if not binary:
        unavailable("no redis-server for a Redis Cluster")
    try:
        c = RedisClusterNodes(binary, tmp_path_factory.mktemp("cluster"))
    except RuntimeError as exc:
        unavailable(str(exc))
    yield c
    c.stop()


@pytest.fixture
def rc(cluster: RedisClusterNodes) -> Iterator[redis.RedisCluster]:
    client = connect(cluster.url)
    client.flushall()
    yield client
    client.close()


def ids_on_distinct_nodes(cluster: RedisClusterNodes, n: int) -> list[str]:
    """Experiment ids whose slots belong to n different masters."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < n:
        exp = f"toy-cluster-{i}"
        chosen.setdefault(cluster.owner(key_slot(exp.encode())), exp)
        i += 1
    return list(chosen.values())


def serve_until_done(cluster: RedisClusterNodes, tmp_path: Path, exp: str, *worker_args: str) -> str:
    """Two workers and an arbiter on the cluster until ``exp`` ends; their logs."""
    fleet = Fleet(cluster.url, tmp_path / "logs")
    try:
        for name in ("w1", "w2"):
            fleet.start("worker", name, "--heartbeat-s", "0.5", *worker_args)
        fleet.start("arbiter", "a1")
        res = pbt("wait", exp, "--timeout", "240", "--redis", cluster.url, timeout=260)
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    finally:
        fleet.stop()
    return fleet.all_logs()


def test_connect_recognises_a_cluster_node(rc):
    assert isinstance(rc, ClusterClient)
    assert len(rc.get_primaries()) == 3


def test_transaction_pipelines_expose_redis_py_flags_rq_reads(rc):
    """broker/cluster.py's one redis-py cluster internal: the execution strategy's MULTI and WATCH flags."""
    key = Keys("toy-contract").meta
    with rc.pipeline(transaction=True) as pipe:
        assert isinstance(pipe, TransactionPipeline)
        assert (pipe.watching, pipe.explicit_transaction) == (False, False)
        pipe.watch(key)
        assert (pipe.watching, pipe.explicit_transaction) == (True, False)
        pipe.multi()
        assert pipe.explicit_transaction
        pipe.hset(key, "state", "running")
        assert pipe.execute() == [1]
    assert rc.hget(key, "state") == b"running"


def test_segment_job_keys_share_their_experiment_slot():
    jid = "toy-20261125-010203-ab12_m003_17_r2"
    key = TaggedSegmentJob.key_for(jid)
    assert key == "rq:job:{toy-20261125-010203-ab12}" + jid
    assert key_slot(key.encode()) == key_slot(Keys("toy-20261125-010203-ab12").meta.encode())
    assert TaggedSegmentJob.key_for("evil") == "rq:job:evil"  # not a segment id: RQ's own key


def test_toy_experiments_spread_over_three_masters(cluster, rc, tmp_path: Path):
    fleet = Fleet(cluster.url, tmp_path / "logs")
    store = f"file://{tmp_path / 'ckpt'}"
    try:
        window = "lineage.redis_window=8"  # the arbiters archive the lineage beyond 8 records as they go
        cfg = load_file(TOY, ["population.size=4", PAPER_INIT_4, window])
        exps = [launch_in_process(rc, cfg, store, exp_id=e) for e in ids_on_distinct_nodes(cluster, 3)]
        exps.append(launch(cluster.url, store, "population.size=4", PAPER_INIT_4, window))  # and through the CLI
        for name in ("w1", "w2"):
            fleet.start("worker", name, "--heartbeat-s", "0.5")
        for name in ("a1", "a2"):
            fleet.start("arbiter", name, "--claim-idle-ms", "2000")
        for exp in exps:
            res = pbt("wait", exp, "--timeout", "240", "--redis", cluster.url, timeout=260)
            assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    finally:
        fleet.stop()
    logs = fleet.all_logs()
    assert "Traceback" not in logs, logs

    for exp in exps:
        st = status(cluster.url, exp)
        assert st["state"] == "done"
        assert all(m["state"] == "done" and m["scored_step"] == 100 for m in st["members"]), st["members"]
        counts = lineage_counts(rc, exp)  # archived and live records together
        assert max(counts.values()) == 1 and max(event_counts(rc, exp).values()) == 1
        assert rc.llen(Keys(exp).archive) > 0 and rc.xlen(Keys(exp).lineage) < len(counts)
        assert [rec for rec in records(rc, exp) if rec.action == "exploit"], f"{exp}: PBT never exploited"
        assert st["best"]["score"] > 0.7, st["best"]  # neither alone passes 0.39
    listed = pbt("list", "--redis", cluster.url)  # state and best score, read across the shards
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    for exp in exps:
        best = status(cluster.url, exp)["best"]
        assert lines[exp].startswith(f"{exp}  done  best q={best['score']:.6g} ({best['member']}, step 100)"), lines

    # every key of an experiment, RQ's included, sits on the master that owns its slot
    nodes = [redis.Redis(port=p) for p in cluster.ports]
    homes = []
    for exp in exps:
        owner = cluster.owner(key_slot(exp.encode()))
        holding = [i for i, n in enumerate(nodes) if n.keys(f"*{{{exp}}}*")]
        assert holding == [owner], (exp, holding, owner)
        own = {k.decode() for k in nodes[owner].keys(f"*{{{exp}}}*")}
        assert {Keys(exp).meta, Keys(exp).archive} <= own, sorted(own)[:20]  # RQ's job keys too, while they last
        homes.append(owner)
    assert set(homes[:3]) == {0, 1, 2}
    check_dashboard(cluster, rc, exps, tmp_path)


def check_dashboard(cluster: RedisClusterNodes, rc: redis.RedisCluster, exps: list[str], tmp_path: Path) -> None:
    """``pbt dashboard`` pointed at one node reads every experiment, whichever master holds it."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn for pbt dashboard: pip install 'pbt-mq[dashboard]'")
    dash = Dashboard(tmp_path / "logs", "--redis", cluster.url)
    try:
        def get(path: str) -> dict:
            with urllib.request.urlopen(dash.url.rstrip("/") + path, timeout=30) as res:
                return json.loads(res.read())

        rows = {e["experiment"]: e for e in get("/api/experiments")["experiments"]}
        assert set(rows) == set(exps)
        for exp in exps:
            st = status(cluster.url, exp)
            assert rows[exp]["state"] == "done" and rows[exp]["progress"] == 1.0
            assert rows[exp]["best"] == {"member": st["best"]["member"], "score": st["best"]["score"]}
            doc = get(f"/api/experiments/{exp}")
            assert [m["id"] for m in doc["members"]] == ["m000", "m001", "m002", "m003"]
            want = len(records(rc, exp))  # archived records and those still in Redis
            deadline = time.monotonic() + 30
            lin = get(f"/api/experiments/{exp}/lineage")
            while lin["total"] < want and time.monotonic() < deadline:  # it reads the log in bounded steps
                time.sleep(0.3)
                lin = get(f"/api/experiments/{exp}/lineage")
            assert lin["total"] == len(lin["nodes"]) == want, (lin["total"], len(lin["nodes"]), want)
            assert get(f"/api/experiments/{exp}")["decisions"] == want
            assert get(f"/api/experiments/{exp}/members/{st['best']['member']}/lineage")["segments"]
        assert isinstance(get("/api/workers")["workers"], list)  # a global key: read on a cluster too (fleet stopped)
        # experiments side by side, whichever masters hold them: the page's summaries are pbt compare's
        pair = exps[:2]
        shown = get(f"/api/compare?exp={pair[0]}&exp={pair[1]}")
        res = pbt("compare", *pair, "--json", "--redis", cluster.url)
        assert res.returncode == 0, res.stderr
        printed = json.loads(res.stdout)
        assert [(e["experiment"], e["final"], e["segments"]) for e in shown["experiments"]] == [
            (e["experiment"], e["final"], e["segments"]) for e in printed]
        assert all(e["final"] == status(cluster.url, e["experiment"])["best"]["score"] for e in printed)
    finally:
        dash.stop()


def test_a_large_population_is_shown_as_bands_on_a_cluster(cluster, rc, tmp_path: Path):
    """Issue 26: above LARGE_POPULATION members the dashboard's bands and best lines, read from a cluster."""
    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        unavailable("no starlette/uvicorn for pbt dashboard: pip install 'pbt-mq[dashboard]'")
    size = LARGE_POPULATION + 1
    exp = launch(cluster.url, f"file://{tmp_path / 'ckpt'}", f"population.size={size}")
    score = write_history(rc, exp, size)
    dash = Dashboard(tmp_path / "logs", "--redis", cluster.url)
    try:
        url = f"{dash.url.rstrip('/')}/api/experiments/{exp}"
        deadline, doc = time.monotonic() + 60, {}
        while time.monotonic() < deadline and doc.get("decisions") != SEGMENTS * size:
            with urllib.request.urlopen(url, timeout=30) as res:
                doc = json.loads(res.read())
            time.sleep(0.2)
        assert doc["large"]["bands"]["n"] == [size] * SEGMENTS
        assert doc["large"]["top"] == sorted(score, key=lambda m: -score[m])[:TOP_LINES]
        assert {n["m"] for n in doc["large"]["nodes"]} >= set(doc["large"]["top"])
    finally:
        dash.stop()


def test_a_loop_api_experiment_on_a_cluster(cluster, rc, tmp_path: Path):
    """The loop API changes nothing on the wire: a plain function's experiment runs on a cluster too."""
    exp = launch(cluster.url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.loops:toy", "population.size=4",
                 PAPER_INIT_4)
    assert "Traceback" not in serve_until_done(cluster, tmp_path, exp)
    assert max(lineage_counts(rc, exp).values()) == 1 and max(event_counts(rc, exp).values()) == 1
    assert [rec for rec in records(rc, exp) if rec.action == "exploit"]


def test_the_rules_of_issue_17_on_a_cluster(cluster, rc, tmp_path: Path):
    """Burn-in, synchronous rounds, a failed member replaced, plug-in rules and several metrics: every key
    they add lives in the experiment's slot, so they run on a cluster as on one node."""
    from helpers import ROOT

    from pbt_mq.core.model import Action
    from pbt_mq.rules.pareto import dominates
    from pbt_mq.rules.plugins import allow_plugins
    from pbt_mq.state.experiment import load_config
    from pbt_mq.state.lineage import replay_decisions

    fleet = Fleet(cluster.url, tmp_path / "logs")
    store = f"file://{tmp_path / 'ckpt'}"
    try:
        rules = launch(cluster.url, store, "population.size=4", PAPER_INIT_4, "trainable=tests.trainables:Flaky",
                       "worker.max_retries=1", "exploit.synch=true", "exploit.burn_in_steps=20",
                       "explore.rule=tests.plugin_rules:HalveOrDouble", "stop.steps=60")
        multi = launch(cluster.url, store, "population.size=4", "stop.steps=100",
                       file=str(ROOT / "workers" / "pareto.toml"))
        for name in ("w1", "w2"):
            fleet.start("worker", name, "--heartbeat-s", "0.5")
        for name in ("a1", "a2"):
            fleet.start("arbiter", name, "--claim-idle-ms", "2000", "--plugins", "tests.plugin_rules")
        for exp in (rules, multi):
            res = pbt("wait", exp, "--timeout", "300", "--redis", cluster.url, timeout=320)
            assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    finally:
        fleet.stop()
    allow_plugins(["tests.plugin_rules"])
    try:
        recs = records(rc, rules)
        assert replay_decisions(load_config(rc, rules), recs) == []
    finally:
        allow_plugins(None)
    assert [rec for rec in recs if rec.action is Action.REPLACED and rec.member == "m000" and rec.seq == 0]
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert all(rec.step >= 20 and rec.parent_step >= 20 for rec in exploits)
    assert [rec for rec in recs if rec.action is Action.CONTINUE]
    assert early_decisions(rc, rules, recs) == []  # every round complete first
    assert [m["state"] for m in status(cluster.url, rules)["members"]] == ["done"] * 4
    st = status(cluster.url, multi)
    front = {row["member"]: (row["values"]["accuracy"], -row["values"]["density"]) for row in st["front"]}
    assert front and not any(dominates(front[a], front[b]) for a in front for b in front if a != b)
    assert replay_decisions(load_config(rc, multi), records(rc, multi)) == []
    assert max(lineage_counts(rc, rules).values()) == 1 and max(lineage_counts(rc, multi).values()) == 1


def test_the_rules_of_issue_23_on_a_cluster(cluster, rc, tmp_path: Path):
    """Windows of scores (their hash lives in the experiment's slot), ttest, sub-populations and crossover
    decided by two arbiters on a cluster, every decision replayed from the log."""
    from helpers import TTEST_SETS, WINDOW_SETS, subpopulation_errors, window_errors

    from pbt_mq.core.model import Action
    from pbt_mq.state.experiment import load_config
    from pbt_mq.state.lineage import replay_decisions

    fleet = Fleet(cluster.url, tmp_path / "logs")
    store = f"file://{tmp_path / 'ckpt'}"
    try:
        exps = [launch(cluster.url, store, *sets) for sets in (TTEST_SETS, WINDOW_SETS)]
        for name in ("w1", "w2"):
            fleet.start("worker", name, "--heartbeat-s", "0.5")
        for name in ("a1", "a2"):
            fleet.start("arbiter", name, "--claim-idle-ms", "2000")
        for exp in exps:
            res = pbt("wait", exp, "--timeout", "300", "--redis", cluster.url, timeout=320)
            assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    finally:
        fleet.stop()
    for exp in exps:
        recs = records(rc, exp)
        assert replay_decisions(load_config(rc, exp), recs) == []
        assert window_errors(recs, 3) == []
        assert [rec for rec in recs if rec.action is Action.EXPLOIT]
        assert max(lineage_counts(rc, exp).values()) == 1
    assert subpopulation_errors(records(rc, exps[1]), (1, 2, 0), 4) == []
    assert "Traceback" not in fleet.all_logs()


def test_keys_of_another_type_are_moved_aside_on_a_cluster(cluster, rc, tmp_path: Path):
    """Issue 24 on a cluster: a member's hash and an events stream replaced by strings (each read per
    stream, per node) are moved aside within the experiment's slot; only that member fails, every
    experiment finishes."""
    fleet = Fleet(cluster.url, tmp_path / "logs")
    store = f"file://{tmp_path / 'ckpt'}"
    sets = ("population.size=4", PAPER_INIT_4, "trainable_args.delay_s=0.05", "stop.steps=48")
    try:
        victim, other = (launch(cluster.url, store, *sets) for _ in range(2))
        fleet.start("worker", "w1", "--heartbeat-s", "0.5")
        fleet.start("arbiter", "a1", "--claim-idle-ms", "2000", "--reap-interval-ms", "300", "--reap-grace-ms", "1000")
        k = Keys(victim)
        deadline = time.monotonic() + 60
        while rc.xlen(k.lineage) < 2:
            assert time.monotonic() < deadline, fleet.all_logs()
            time.sleep(0.05)
        for key in (k.member("m002"), k.events):
            rc.delete(key)
            rc.set(key, "written by hand")
        for exp in (other, victim):
            res = pbt("wait", exp, "--timeout", "120", "--redis", cluster.url, timeout=140)
            assert res.returncode == 0, f"{exp}: {res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    finally:
        fleet.stop()
    states = {m["id"]: m["state"] for m in status(cluster.url, victim)["members"]}
    assert states == {"m000": "done", "m001": "done", "m002": "failed", "m003": "done"}, states
    assert all(m["state"] == "done" for m in status(cluster.url, other)["members"])
    aside = sorted(key.decode() for key in rc.scan_iter(match=f"{k.prefix}:quarantine:*"))
    assert [a.rsplit(":", 1)[0] for a in aside] == [f"{k.prefix}:quarantine:events", f"{k.prefix}:quarantine:member:m002"]
    assert "Traceback" not in fleet.log("a1") + fleet.log("w1")


def test_a_population_larger_than_the_fleet_continues_from_memory_on_a_cluster(cluster, rc, tmp_path: Path):
    """Issue 27 on a cluster: the job's home field lives in its tagged hash, take_job.lua runs per
    experiment queue with every key in the experiment's slot, and the workers' caches serve most starts."""
    from pbt_mq.observe.stats import experiment_stats

    exp = launch(cluster.url, f"file://{tmp_path / 'ckpt'}", "population.size=8", "population.initial=[]",
                 "stop.steps=48", "trainable_args.delay_s=0.02")
    logs = serve_until_done(cluster, tmp_path, exp, "--affinity-wait-ms", "30000")
    st = experiment_stats(rc, exp)
    assert st["starts"].get("fresh") == 8 and st["no_download_fraction"] >= 0.8, st
    assert "Traceback" not in logs
