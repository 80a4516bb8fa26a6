"""Redis Cluster: a real 3-master cluster on loopback runs toy experiments, each in its own slot.

Experiments are launched with ids whose hash tags land on different masters; real pbt-worker
and pbt-arbiter processes are pointed at one node and find the rest themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import PAPER_INIT_4, TOY, event_counts, launch, lineage_counts, pbt, status
from redis.crc import key_slot
from services import Fleet, RedisClusterNodes, redis_binary, unavailable

from pbt_mq.broker.cluster import ClusterClient
from pbt_mq.broker.connect import connect
from pbt_mq.broker.jobs import TaggedSegmentJob
from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.state.experiment import launch as launch_in_process
from pbt_mq.state.lineage import records


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


def test_connect_recognises_a_cluster_node(rc):
    assert isinstance(rc, ClusterClient)
    assert len(rc.get_primaries()) == 3


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
