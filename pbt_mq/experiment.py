"""An experiment's life in Redis: launch, read back, enqueue segments, status, stop."""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import time
from functools import lru_cache
from typing import Any

import redis
from rq import Queue

from . import config as config_mod
from .cluster import EXP_ID, ExperimentQueue, is_cluster
from .config import Experiment
from .keys import EXPERIMENTS, GROUP, Keys, job_id
from .protocol import SegmentCommand
from .scripts import set_state_if
from .serializer import SEGMENT_FUNC, MsgpackSerializer, SegmentJob
from .space import sample_all

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"
TERMINAL = (DONE, STOPPED, FAILED)


class UnknownExperiment(KeyError):
    def __str__(self) -> str:
        return f"no experiment {self.args[0]!r} in this Redis (see: redis-cli ZRANGE {EXPERIMENTS} 0 -1)"


def text_fields(h: dict[bytes, bytes]) -> dict[str, str]:
    """A Redis hash as text, leaving out ``cmd`` (the member's current command, msgpack bytes)."""
    return {a.decode(): b.decode(errors="replace") for a, b in h.items() if a != b"cmd"}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def member_ids(n: int) -> list[str]:
    width = max(3, len(str(n - 1)))
    return [f"m{i:0{width}d}" for i in range(n)]


def member_seed(seed: int, member: str) -> int:
    """A member's init seed: stable across machines, different per member."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{member}".encode()).digest()[:4], "big")


def queue_for(r: redis.Redis, name: str, exp: str | None = None) -> Queue:
    """The RQ queue ``exp``'s segments go to: the shared ``name``, or on a Redis Cluster
    the experiment's own queue in its hash slot (see cluster.py)."""
    if is_cluster(r):
        if exp is None:
            raise ValueError("on a Redis Cluster every queue belongs to one experiment")
        return ExperimentQueue.for_experiment(r, name, exp, serializer=MsgpackSerializer)
    return Queue(name, connection=r, serializer=MsgpackSerializer, job_class=SegmentJob)


def first_target(cfg: Experiment, step: int) -> dict[str, Any]:
    """The target of a segment starting at ``step``: the next ready point, capped by the stop."""
    if cfg.ready.seconds is not None:
        return {"seconds": cfg.ready.seconds}
    until = step + (cfg.ready.steps or 1)
    if cfg.stop.steps is not None:
        until = min(until, cfg.stop.steps)
    return {"until_step": max(until, step + 1)}


def enqueue_segment(pipe: Any, queue: Queue, cfg: Experiment, cmd: SegmentCommand, suffix: str = "",
                    member: dict[str, Any] | None = None) -> str:
    """Queue ``cmd`` inside ``pipe`` (already in MULTI) and make it the member's current job
    (``member``: more fields for the member hash, written in the same HSET).

    The member hash keeps the job id and the encoded command, so a reaper can queue the very
    same segment again if the worker running it dies, and a stale copy can recognise itself.
    """
    jid = job_id(cmd.experiment, cmd.member, cmd.seq) + suffix
    wire = cmd.encode()
    job = queue.create_job(
        SEGMENT_FUNC,
        args=[wire],
        job_id=jid,
        timeout=cfg.worker.segment_timeout_s,
        result_ttl=3600,
        failure_ttl=7 * 86400,
        description=f"{cmd.experiment} {cmd.member} seq={cmd.seq} step={cmd.step} ({cmd.why})",
    )
    mkey = Keys(cmd.experiment).member(cmd.member)
    fields = {**(member or {}), "state": "queued", "seq": cmd.seq, "job": jid, "cmd": wire, "queued_ms": now_ms(),
              "queue": queue.name}
    pipe.hset(mkey, mapping=fields)
    pipe.hdel(mkey, "limbo_ms")
    queue.enqueue_job(job, pipeline=pipe)
    return jid


def launch(r: redis.Redis, cfg: Experiment, store_url: str, exp_id: str | None = None) -> str:
    """Write the experiment to Redis and queue every member's first segment, atomically."""
    exp = exp_id or new_id(cfg.name)
    k = Keys(exp)
    rng = random.Random(f"pbt-mq/{cfg.seed}/init")
    if not EXP_ID.match(exp):
        raise ValueError(f"experiment id {exp!r} must be 1-100 letters, digits, '_' or '-'")
    queue = queue_for(r, cfg.queue, exp)
    members = member_ids(cfg.population)
    r.zadd(EXPERIMENTS, {exp: now_ms()})  # first, outside the MULTI (another slot on a cluster);
    # readers skip an id whose meta is not there yet
    pipe = r.pipeline(transaction=True)
    pipe.multi()  # explicit: RQ's enqueue_job expects a pipeline already in MULTI
    pipe.hset(
        k.meta,
        mapping={
            "state": RUNNING,
            "name": cfg.name,
            "created_ms": now_ms(),
            "population": cfg.population,
            "seed": cfg.seed,
            "queue": cfg.queue,
            "store": store_url,
            "metric": cfg.metric,
            "mode": cfg.mode,
            "finished": 0,
            "config": cfg.to_json(),
        },
    )
    pipe.xgroup_create(k.events, GROUP, id="0", mkstream=True)
    for i, m in enumerate(members):
        hp = sample_all(cfg.spaces, rng)
        if i < len(cfg.initial):
            hp.update(cfg.initial[i])
        cmd = SegmentCommand(
            experiment=exp, member=m, seq=0, step=0, hparams=hp, why="start", **first_target(cfg, 0)
        )
        pipe.hset(k.member(m), mapping={"step": 0, "hparams": json.dumps(hp), "updated_ms": now_ms()})
        enqueue_segment(pipe, queue, cfg, cmd)
    pipe.execute()
    return exp


@lru_cache(maxsize=256)
def _parse_cached(text: str) -> Experiment:
    return config_mod.load_json(text)


def load_config(r: redis.Redis, exp: str) -> Experiment:
    text = r.hget(Keys(exp).meta, "config")
    if text is None:
        raise UnknownExperiment(exp)
    return _parse_cached(text.decode())


def metric_value(cfg: Experiment, stored: float) -> float:
    """Undo the sign flip of mode = "min"."""
    return stored if cfg.mode == "max" else -stored


def status(r: redis.Redis, exp: str) -> dict[str, Any]:
    k = Keys(exp)
    meta = text_fields(r.hgetall(k.meta))
    if not meta:
        raise UnknownExperiment(exp)
    cfg = load_config(r, exp)
    ids = member_ids(cfg.population)
    pipe = r.pipeline(transaction=False)
    for m in ids:
        pipe.hgetall(k.member(m))
    rows = []
    for m, h in zip(ids, pipe.execute(), strict=True):
        d = text_fields(h)
        score = float(d["score"]) if d.get("score") not in (None, "") else None
        rows.append(
            {
                "id": m,
                "state": d.get("state", "?"),
                "seq": int(d.get("seq", 0)),
                "step": int(d.get("step", 0)),
                "scored_step": int(d["scored_step"]) if d.get("scored_step") else None,
                "score": None if score is None or not math.isfinite(score) else score,
                "hparams": json.loads(d.get("hparams", "{}")),
                "worker": d.get("worker", ""),
                "parent": d.get("parent") or None,
                "error": d.get("error") or None,
            }
        )
    top = r.zrevrange(k.scores, 0, 0, withscores=True)
    best = None
    if top:
        member = top[0][0].decode()
        row = next(x for x in rows if x["id"] == member)
        best = {"member": member, "score": metric_value(cfg, top[0][1]), "step": row["scored_step"]}
    return {
        "experiment": exp,
        "state": meta.get("state"),
        "reason": meta.get("reason"),
        "metric": cfg.metric,
        "mode": cfg.mode,
        "population": cfg.population,
        "finished": int(meta.get("finished", 0)),
        "store": meta.get("store"),
        "best": best,
        "members": rows,
    }


def stop(r: redis.Redis, exp: str, reason: str = "stopped by user") -> bool:
    """Mark the experiment stopped: workers skip its queued segments, arbiters queue no more."""
    k = Keys(exp)
    if not r.exists(k.meta):
        raise UnknownExperiment(exp)
    return set_state_if(r, k.meta, RUNNING, STOPPED, reason, now_ms())  # never overwrites done
