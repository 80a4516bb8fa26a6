"""The tracking sender (``worker.tracking``) on a real redis-server, with a tracker that records its
calls: the lease per chunk, closing every run at the end, and backends injected by the caller. The
real trackers from real workers (MLflow, W&B): tests/integrations/test_tracking.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pbt_mq.config.parse import load_file
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Meta, TrackingState
from pbt_mq.core.protocol import CheckpointRef, ReadyEvent
from pbt_mq.worker import tracking
from pbt_mq.worker.tracking import BATCH, CHUNK, Sender, load_trackers

EXP = "trk-1"
K = Keys(EXP)


class Recorder:
    """A tracker that keeps what it was asked to do; the server names runs (as MLflow)."""

    def __init__(self, name: str = "mlflow", on_log: Callable[[int], None] | None = None) -> None:
        self.name, self.on_log = name, on_log
        self.made = 0
        self.logged: list[tuple[str, int]] = []
        self.closed: list[tuple[str, bool]] = []
        self.lineage: list[tuple[str, str, int, str]] = []  # (what, member, step, in words)

    def new_id(self) -> str | None:
        return None

    def open(self, member: str, run_id: str | None) -> str:
        if run_id is None:
            self.made += 1
            return f"{member}-{id(self)}-{self.made}"
        return run_id

    def log(self, run_id: str, step: int, metrics: dict[str, float], hparams: dict[str, Any], when_ms: int) -> None:
        self.logged.append((run_id, step))
        if self.on_log:
            self.on_log(len(self.logged))

    def exploit(self, run_id: str, rec: Lineage) -> None:
        self.lineage.append(("exploit", rec.member, rec.step, tracking.in_words(rec)))

    def replaced(self, run_id: str, rec: Lineage) -> None:
        self.lineage.append(("replaced", rec.member, rec.step, tracking.in_words(rec)))

    def delete(self, run_id: str) -> None:
        pass

    def close(self, run_id: str, finished: bool) -> None:
        self.closed.append((run_id, finished))


def publish(r: Any, member: str, step: int) -> None:
    ref = CheckpointRef(f"{EXP}/{member}/{step:06d}-s{step}-abcd.pt", "0" * 64, 1)
    ev = ReadyEvent(experiment=EXP, member=member, seq=step, step=step, score=0.5, checkpoint=ref,
                    hparams={"lr": 0.1}, metrics={"q": 0.5})
    r.xadd(K.events, {"member": member, "seq": step, "step": step, "score": "0.5", "msg": ev.encode()})


def running(r: Any, state: ExperimentState = ExperimentState.RUNNING) -> None:
    r.hset(K.meta, mapping=Meta.fields(state=state))


def test_a_sender_that_loses_its_lease_stops_within_one_chunk(r):
    running(r)
    for i in range(BATCH):
        publish(r, f"m{i % 4:03d}", i)

    def taken_over(n: int) -> None:  # mid-chunk, another worker holds the lease (this one stalled past it)
        if n == 3:
            r.hset(K.tracking, mapping=TrackingState.fields(holder="w-other", lease_ms=now_ms() + 60_000))

    rec = Recorder(on_log=taken_over)
    me = Sender(r, "w-me", EXP, [rec])
    assert me.pump() is False
    assert len(rec.logged) == CHUNK < BATCH  # it finished the chunk it was in, and sent no further
    assert not me.held and TrackingState.read(r, K.tracking, "events").events == ""  # the new holder resends it
    other = Recorder()
    r.hset(K.tracking, mapping=TrackingState.fields(lease_ms=1))  # the other's lease lapses in turn
    assert Sender(r, "w-other", EXP, [other]).pump() is True
    assert [s for _, s in other.logged] == list(range(BATCH))  # from where the cursor was: nothing skipped


def test_the_lease_is_renewed_before_every_chunk(r):
    running(r)
    for i in range(3 * CHUNK):
        publish(r, "m000", i)
    rec = Recorder()
    me = Sender(r, "w-me", EXP, [rec])
    renewed_after: list[int] = []
    lease = me.lease
    me.lease = lambda: renewed_after.append(len(rec.logged)) or lease()  # type: ignore[method-assign]
    assert me.pump() is False
    assert len(rec.logged) == 3 * CHUNK
    assert renewed_after == [0, 0, CHUNK, 2 * CHUNK]  # the pass's own, then one before each chunk


def test_a_slow_tracker_makes_short_chunks(r, monkeypatch):
    """A chunk also ends when a third of the lease has gone by, so the lease never lapses while a
    slow tracker takes its time (another worker would then send the same entries)."""
    monkeypatch.setattr(tracking, "LEASE_MS", 300)  # a chunk is cut after 0.1 s
    running(r)
    for i in range(CHUNK):
        publish(r, "m000", i)
    rec = Recorder(on_log=lambda n: time.sleep(0.05))
    me = Sender(r, "w-me", EXP, [rec])
    renewals: list[int] = []
    lease = me.lease
    me.lease = lambda: renewals.append(len(rec.logged)) or lease()  # type: ignore[method-assign]
    assert me.pump() is False
    assert [s for _, s in rec.logged] == list(range(CHUNK))  # all sent, in order, once
    assert len(renewals) >= 4 and renewals == sorted(renewals)  # 1 s of sending: renewed every 0.1 s or so
    assert TrackingState.read(r, K.tracking, "events").events == r.xrange(K.events)[-1][0].decode()


def test_exploits_and_replacements_are_sent_and_said_in_words_other_decisions_are_not(r):
    running(r)
    common = dict(score=0.5, hparams={"lr": 0.1}, next_hparams={"lr": 0.2})
    for rec in (Lineage(member="m000", seq=1, step=4, action=Action.CONTINUE, **common),
                Lineage(member="m001", seq=2, step=8, action=Action.EXPLOIT, parent="m003", parent_step=8,
                        ops=["lr: 0.1 -> 0.2 (x2.0)"], **common),
                Lineage(member="m002", seq=0, step=0, action=Action.REPLACED, reason="Traceback ...\nOSError: disk",
                        **common),
                Lineage(member="m002", seq=3, step=12, action=Action.REPLACED, parent="m001", parent_step=12,
                        reason="RuntimeError: boom", **common)):
        r.xadd(K.lineage, rec.encode())
    rec = Recorder()
    assert Sender(r, "w-me", EXP, [rec]).pump() is False
    assert rec.lineage == [
        ("exploit", "m001", 8, "at step 8 copied m003 at step 8; lr: 0.1 -> 0.2 (x2.0)"),
        ("replaced", "m002", 0, "its segment from step 0 failed (OSError: disk); restarted fresh"),
        ("replaced", "m002", 12,
         "its segment from step 12 failed (RuntimeError: boom); restarted from m001 at step 12"),
    ]
    assert TrackingState.read(r, K.tracking).sent == 4


def test_finish_closes_every_run_of_the_experiment_also_those_a_dead_sender_opened(r):
    running(r)
    for i, m in enumerate(("m000", "m001", "m002")):
        publish(r, m, i)
    first = Recorder()
    assert Sender(r, "w-dead", EXP, [first]).pump() is False  # sends all, opens three runs, then dies
    runs = {f.decode(): v.decode() for f, v in r.hgetall(K.runs).items()}
    assert sorted(runs) == ["mlflow/m000", "mlflow/m001", "mlflow/m002"]
    r.hset(K.tracking, mapping=TrackingState.fields(lease_ms=1))  # its lease lapses
    running(r, ExperimentState.DONE)
    publish(r, "m003", 3)  # written before the end: the new sender sends it, opening m003's run
    second = Recorder()
    new = Sender(r, "w-new", EXP, [second])
    assert new.pump() is False and new.finished
    runs = {f.decode(): v.decode() for f, v in r.hgetall(K.runs).items()}
    assert sorted(second.closed) == sorted((rid, True) for rid in runs.values()) and len(runs) == 4
    assert first.closed == []
    assert TrackingState.read(r, K.tracking, "done_ms").done_ms


def test_backends_are_injected_by_name_and_a_missing_one_is_said_once(caplog):
    cfg = load_file("workers/toy.toml", ['tracking.mlflow="file:///x"', 'tracking.wandb="p"'])
    made: list[tuple[str, str]] = []

    def mlflow(target: str, c: Any, exp: str) -> Recorder:
        made.append((target, exp))
        return Recorder("mlflow")

    def wandb(target: str, c: Any, exp: str) -> Recorder:
        raise ImportError("No module named 'wandb'")

    with caplog.at_level(logging.ERROR, logger="pbt_mq.worker.tracking"):
        got, problems = load_trackers(cfg, EXP, {"mlflow": mlflow, "wandb": wandb})
        assert [t.name for t in got] == ["mlflow"] and made == [("file:///x", EXP)]
        assert "pip install 'pbt-mq[wandb]'" in caplog.text and problems == [
            "wandb: No module named 'wandb'; install it on the workers: pip install 'pbt-mq[wandb]'"]
        caplog.clear()
        assert load_trackers(cfg, EXP, {})[0] == []
        assert "without a mlflow backend" in caplog.text and "without a wandb backend" in caplog.text
