"""The tracking sender with the real MLflow tracker (a local file store) on a real redis-server, in
this process: a sender that takes over from a dead one closes every run, and params that failed to
log are logged at the next try. The whole path from real workers: test_tracking.py."""

from __future__ import annotations

from typing import Any

import pytest

from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import ExperimentState, Meta, TrackingState
from pbt_mq.core.protocol import CheckpointRef, ReadyEvent
from pbt_mq.worker.tracking import Sender

pytestmark = pytest.mark.integration
NEEDS = [("mlflow", "mlflow")]
EXP = "trk-ml"
K = Keys(EXP)


@pytest.fixture
def uri(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the tracker sets for a file store, undone after
    return f"file://{tmp_path / 'mlruns'}"


def tracker(uri: str) -> Any:
    from pbt_mq.integrations.mlflow import MlflowTracker

    return MlflowTracker(uri, load_file("workers/toy.toml", []), EXP)


def publish(r: Any, member: str, step: int) -> None:
    ref = CheckpointRef(f"{EXP}/{member}/{step:06d}-s{step}-abcd.pt", "0" * 64, 1)
    ev = ReadyEvent(experiment=EXP, member=member, seq=step, step=step, score=0.5, checkpoint=ref,
                    hparams={"h0": 1.0, "h1": 0.0}, metrics={"q": 0.5})
    r.xadd(K.events, {"member": member, "seq": step, "step": step, "score": "0.5", "msg": ev.encode()})


def test_a_sender_that_takes_over_from_a_dead_one_finishes_every_run(r, uri):
    from mlflow import MlflowClient

    r.hset(K.meta, mapping=Meta.fields(state=ExperimentState.RUNNING))
    for i, m in enumerate(("m000", "m001", "m002")):
        publish(r, m, i)
    assert Sender(r, "w-dead", EXP, [tracker(uri)]).pump() is False  # opens three runs, then dies: no leave()
    r.hset(K.tracking, mapping=TrackingState.fields(lease_ms=1))  # its lease lapses
    publish(r, "m003", 3)
    r.hset(K.meta, mapping=Meta.fields(state=ExperimentState.DONE))
    new = Sender(r, "w-new", EXP, [tracker(uri)])
    assert new.pump() is False and new.finished
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert sorted((run.info.run_name, run.info.status) for run in runs) == [
        (f"{EXP}/m{i:03d}", "FINISHED") for i in range(4)]


def test_params_a_failed_batch_carried_are_logged_at_the_next_try(uri):
    t = tracker(uri)
    rid = t.open("m000", None)
    t.client.delete_run(rid)  # the server refuses the batch (a deleted run takes no data)
    with pytest.raises(ValueError, match="active"):
        t.log(rid, 1, {"q": 0.5}, {"h0": 1.0, "h1": 0.0}, 1000)
    t.client.restore_run(rid)
    t.log(rid, 2, {"q": 0.6}, {"h0": 2.0, "h1": 0.5}, 2000)
    run = t.client.get_run(rid)
    assert run.data.params == {"h0": "2.0", "h1": "0.5"}  # the first hyperparameters that were logged
    assert [(m.step, m.value) for m in t.client.get_metric_history(rid, "q")] == [(2, 0.6)]
    t.log(rid, 3, {"q": 0.7}, {"h0": 3.0, "h1": 0.5}, 3000)  # and then never again: MLflow never changes a param
    assert t.client.get_run(rid).data.params == {"h0": "2.0", "h1": "0.5"}
