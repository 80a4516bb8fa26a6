"""[tracking]: MLflow (a local file store, read back with MlflowClient) and W&B (offline) from real
pbt-worker processes. Two workers share a population of four, so members move between workers:
each member must still have exactly one run, named EXP/MEMBER, with its metrics at their steps
and every exploit."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
import yaml
from helpers import PAPER_INIT_4, launch, pbt

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import TrackingState
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.state.lineage import records

pytestmark = pytest.mark.integration


def test_one_run_per_member_in_mlflow_and_wandb(fleet, redis_url, r, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's MlflowClient
    uri = f"file://{tmp_path / 'mlruns'}"
    for name in ("w1", "w2"):
        fleet.start("worker", name)
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.loops:toy", "population.size=4",
                 PAPER_INIT_4, f"tracking.mlflow={json.dumps(uri)}", "tracking.wandb='pbt-test'", "stop.steps=60")
    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, res.stderr + fleet.all_logs()
    deadline = time.monotonic() + 120
    while not TrackingState.read(r, Keys(exp).tracking, "done_ms").done_ms:
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.2)
    state = TrackingState.read(r, Keys(exp).tracking)
    evs = [ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(Keys(exp).events)]
    exploits = [rec for rec in records(r, exp) if rec.action == "exploit"]
    assert exploits and state.lost == 0 and state.sent == len(evs) + len(records(r, exp))
    assert len({e.worker for e in evs}) == 2  # members really moved between workers
    members = [f"m{i:03d}" for i in range(4)]

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert sorted(run.info.run_name for run in runs) == [f"{exp}/{m}" for m in members]
    for run in runs:
        m = run.data.tags["pbt.member"]
        mine = sorted((e.step, e.score) for e in evs if e.member == m)
        hist = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "q"))
        assert hist == mine
        assert [x.step for x in client.get_metric_history(run.info.run_id, "hparams/h0")] == sorted(s for s, _ in mine)
        got = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "exploit/donor_step"))
        want = sorted((rec.step, float(rec.parent_step)) for rec in exploits if rec.member == m)
        assert got == want
        assert sum(k.startswith("pbt.exploit.") for k in run.data.tags) == len(want)
        assert run.info.status == "FINISHED" and set(run.data.params) == {"h0", "h1"}

    dirs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    names = Counter()
    for d in dirs:
        config = yaml.safe_load((d / "files" / "config.yaml").read_text())
        summary = json.loads((d / "files" / "wandb-summary.json").read_text())
        assert config["pbt/run"]["value"] == summary["pbt/run"]
        names[summary["pbt/run"]] += 1
    assert names == Counter({f"{exp}/{m}": 1 for m in members})
