"""[tracking]: MLflow (a local file store, read back with MlflowClient) and W&B (offline) from real
pbt-worker processes. Two workers share a population of four, so members move between workers:
each member must still have exactly one run, named EXP/MEMBER, with its metrics at their steps,
every exploit and every replacement (m000's first segment fails for good)."""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import PAPER_INIT_4, launch, pbt

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, TrackingState
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.state.lineage import records
from pbt_mq.worker.tracking import in_words

pytestmark = pytest.mark.integration
NEEDS = [("mlflow", "mlflow"), ("wandb", "wandb")]


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
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "trainable=tests.trainables:FailsFirst",
                 "worker.max_retries=0", "population.size=4", PAPER_INIT_4, f"tracking.mlflow={json.dumps(uri)}",
                 "tracking.wandb='pbt-test'", "stop.steps=60")
    res = pbt("wait", exp, "--timeout", "180", "--redis", redis_url, timeout=200)
    assert res.returncode == 0, res.stderr + fleet.all_logs()
    deadline = time.monotonic() + 120
    while not TrackingState.read(r, Keys(exp).tracking, "done_ms").done_ms:
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.2)
    state = TrackingState.read(r, Keys(exp).tracking)
    entries = r.xrange(Keys(exp).events)
    evs = [ReadyEvent.decode(f[b"msg"]) for _, f in entries if b"failed" not in f]
    exploits = [rec for rec in records(r, exp) if rec.action is Action.EXPLOIT]
    replaced = [rec for rec in records(r, exp) if rec.action is Action.REPLACED]
    assert exploits and state.lost == 0 and state.sent == len(entries) + len(records(r, exp))
    assert [(rec.member, rec.seq) for rec in replaced] == [("m000", 0)]
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
        assert sorted(x.step for x in client.get_metric_history(run.info.run_id, "hparams/h0")) == sorted(s for s, _ in mine)
        got = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "exploit/donor_step"))
        want = sorted((rec.step, float(rec.parent_step)) for rec in exploits if rec.member == m)
        assert got == want
        assert sum(k.startswith("pbt.exploit.") for k in run.data.tags) == len(want)
        got = sorted((x.step, x.value) for x in client.get_metric_history(run.info.run_id, "replaced/donor_step"))
        assert got == sorted((rec.step, float(rec.parent_step or 0)) for rec in replaced if rec.member == m)
        said = [v for k, v in run.data.tags.items() if k.startswith("pbt.replaced.")]
        assert said == [in_words(rec) for rec in replaced if rec.member == m]
        assert all("(RuntimeError: boom: the first segment" in s for s in said)
        assert run.data.tags["pbt.metric"] == "q" and run.data.tags["pbt.mode"] == "max"
        assert run.info.status == "FINISHED" and set(run.data.params) == {"h0", "h1"}

    names = Counter()
    for f in sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")):
        run, config, summary = wandb_run(f)
        assert run == config["pbt/run"] == summary["pbt/run"]
        assert summary.get("pbt/exploits", 0) == sum(1 for rec in exploits if f"{exp}/{rec.member}" == run)
        assert summary.get("pbt/replacements", 0) == sum(1 for rec in replaced if f"{exp}/{rec.member}" == run)
        names[run] += 1
    assert names == Counter({f"{exp}/{m}": 1 for m in members})


def wandb_run(path: Path) -> tuple[str, dict, dict]:
    """An offline run's name, config and summary, read from its run-ID.wandb file: W&B's record log
    (a 7-byte header, then 32 KiB blocks of [crc32 u32][length u16][type u8][data]: FULL = 1, or
    FIRST/MIDDLE/LAST = 2/3/4 pieces) of wandb_internal_pb2.Record protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, piece, name, config, summary = 7, 32768, b"", "", {}, {}
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        piece = data if kind in (1, 2) else piece + data
        if kind not in (1, 4):
            continue
        rec = pb.Record()
        rec.ParseFromString(piece)
        which = rec.WhichOneof("record_type")
        if which == "run":
            name = rec.run.display_name
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif which == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif which == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update})
    return name, {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}, summary
