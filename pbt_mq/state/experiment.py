"""An experiment's life in Redis: launch, read back, status, stop."""

from __future__ import annotations

import json
import math
import random
from functools import lru_cache
from typing import Any

import redis

from pbt_mq.broker.jobs import queue_for
from pbt_mq.broker.scripts import set_state_if
from pbt_mq.config.experiment import Experiment
from pbt_mq.config.parse import load_json
from pbt_mq.config.reader import ConfigError
from pbt_mq.core.ids import EXPERIMENT_ID, experiment_ids, leaders, member_ids, new_experiment_id, now_ms
from pbt_mq.core.keys import EXPERIMENTS, GROUP, Keys
from pbt_mq.core.model import SCHEMA, ExperimentState, Member, MemberState, Meta, TrackingState, Why
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.core.space import sample_all
from pbt_mq.state.front import pareto_front
from pbt_mq.state.rounds import round_of
from pbt_mq.state.segments import enqueue_segment


class UnknownExperiment(KeyError):
    def __str__(self) -> str:
        return f"no experiment {self.args[0]!r} in this Redis (see: redis-cli ZRANGE {EXPERIMENTS} 0 -1)"


def launch(r: Any, cfg: Experiment, store_url: str, exp_id: str | None = None) -> str:
    """Write the experiment to Redis and queue every member's first segment, atomically."""
    exp = exp_id or new_experiment_id(cfg.name)
    k = Keys(exp)
    rng = random.Random(f"pbt-mq/{cfg.seed}/init")
    if not EXPERIMENT_ID.match(exp):
        raise ValueError(f"experiment id {exp!r} must be 1-100 letters, digits, '_' or '-'")
    queue = queue_for(r, cfg.queue, exp)
    r.zadd(EXPERIMENTS, {exp: now_ms()})  # first, outside the MULTI (another slot on a cluster);
    # readers skip an id whose meta is not there yet
    pipe = r.pipeline(transaction=True)
    pipe.multi()  # explicit: RQ's enqueue_job expects a pipeline already in MULTI
    pipe.hset(k.meta, mapping=Meta.fields(
        state=ExperimentState.RUNNING, name=cfg.name, created_ms=now_ms(), population=cfg.population, seed=cfg.seed,
        queue=cfg.queue, store=store_url, metric=",".join(cfg.metrics), mode=",".join(cfg.modes), finished=0,
        config=cfg.to_json(),
        schema=SCHEMA,
    ))
    pipe.xgroup_create(k.events, GROUP, id="0", mkstream=True)
    for i, m in enumerate(member_ids(cfg.population)):
        hp = sample_all(cfg.spaces, rng)
        if i < len(cfg.initial):
            hp.update(cfg.initial[i])
        cmd = SegmentCommand(experiment=exp, member=m, seq=0, step=0, hparams=hp, why=Why.START.value,
                             **cfg.first_target(0))
        pipe.hset(k.member(m), mapping=Member.fields(step=0, hparams=hp, updated_ms=now_ms()))
        if cfg.exploit.compare == "step" or cfg.exploit.synch:
            pipe.zadd(k.reached, {m: 0})  # no board is trimmed (no round complete) before every member reported
        enqueue_segment(pipe, queue, cfg, cmd)
    pipe.execute()
    return exp


@lru_cache(maxsize=256)
def _parse_cached(text: str, schema: int) -> Experiment:
    """An experiment goes on as it was launched: a default that changed since keeps its old value."""
    raw = json.loads(text)
    for since, section, key, old in (UPGRADED_DEFAULTS if isinstance(raw, dict) else ()):
        if schema < since and isinstance(raw.get(section, {}), dict):
            raw.setdefault(section, {}).setdefault(key, old)
    return load_json(json.dumps(raw))


UPGRADED_DEFAULTS = (  # (schema that changed it, section, key, the default before)
    (2, "exploit", "compare", "latest"),  # release 1 ranked every member's latest score
    (3, "worker", "on_failure", "fail"),  # release 2 failed a member whose segment kept failing
)


def load_config(r: Any, exp: str) -> Experiment:
    """The experiment as launched (its config travels in its meta hash)."""
    text, schema = r.hmget(Keys(exp).meta, "config", "schema")
    if text is None:
        raise UnknownExperiment(exp)
    try:
        return _parse_cached(text.decode(errors="replace"), int(schema or 1))
    except (ConfigError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"experiment {exp}: its stored config ({Keys(exp).meta}, fields config and schema) is "
                          f"unreadable, so it cannot be read, resumed or exported ({detail[:300]}); launch it again "
                          "from its experiment file") from None


def read_meta(r: Any, exp: str) -> Meta:
    raw = r.hgetall(Keys(exp).meta)
    if not raw:
        raise UnknownExperiment(exp)
    return Meta.decode(raw)


def running_experiments(r: Any) -> dict[str, Meta]:
    """Every running experiment's id and meta (state, queue, population, mode, ...), oldest first."""
    ids = experiment_ids(r.zrange(EXPERIMENTS, 0, -1))
    fields = Meta.names("state", "queue", "population", "mode", "store")
    pipe = r.pipeline(transaction=False)
    for e in ids:
        pipe.hmget(Keys(e).meta, *fields)
    metas = {e: Meta.pick(fields, row) for e, row in zip(ids, pipe.execute(), strict=True)}
    return {e: m for e, m in metas.items() if m.state is ExperimentState.RUNNING}


def metric_value(cfg: Experiment, stored: float) -> float:
    """Undo the sign flip of mode = "min"."""
    return stored if cfg.mode == "max" else -stored


def status(r: Any, exp: str) -> dict[str, Any]:
    """The ``pbt status --json`` shape: the experiment and every member."""
    k = Keys(exp)
    meta = read_meta(r, exp)
    cfg = load_config(r, exp)
    ids = member_ids(cfg.population)
    pipe = r.pipeline(transaction=False)
    for m in ids:
        pipe.hgetall(k.member(m))
    rows = []
    members = {}
    for m, h in zip(ids, pipe.execute(), strict=True):
        rec = members[m] = Member.decode(h)
        rows.append({
            "id": m,
            "state": str(rec.state) if rec.state else "?",
            "seq": rec.seq,
            "step": rec.step,
            "scored_step": rec.scored_step,
            "score": None if rec.score is None or not math.isfinite(rec.score) else rec.score,
            "hparams": rec.hparams or {},
            "worker": rec.worker,
            "parent": rec.parent or None,
            "error": rec.error or None,
        })
    # several metrics: a front, no best; the best is a member of this experiment (not a name written by hand)
    top = [] if cfg.multi else [(m, s) for m, s in leaders(r.zrevrange(k.scores, 0, 15, withscores=True))
                                if m in members]
    best = None
    if top:
        member = top[0][0]
        best = {"member": member, "score": metric_value(cfg, top[0][1]), "step": members[member].scored_step}
    refused = {m.decode(errors="replace"): why.decode(errors="replace") for m, why in r.hgetall(k.refused).items()}
    tracking = TrackingState.read(r, k.tracking, "problem").problem if cfg.tracking else ""
    synch = round_of(r, exp) if cfg.exploit.synch and meta.state is ExperimentState.RUNNING else None  # none after
    return {
        "experiment": exp,
        "state": str(meta.state) if meta.state else None,
        "refused": refused,  # arbiter -> why it cannot decide this experiment (control.refusals)
        "tracking_problem": tracking or None,  # what keeps a tracker ([tracking]) from working, said by a worker
        "round": synch,  # exploit.synch: the round in progress, {at, waiting, behind}, or None
        "metrics": list(cfg.metrics),
        "modes": list(cfg.modes),
        "front": pareto_front(r, cfg, exp) if cfg.multi else None,  # several metrics: the non-dominated members
        "reason": meta.reason or None,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "population": cfg.population,
        "finished": meta.finished,
        "store": meta.store,
        "best": best,
        "members": rows,
    }


def stop(r: Any, exp: str, reason: str = "stopped by user") -> bool:
    """Mark the experiment stopped: workers skip its queued segments, arbiters queue no more."""
    k = Keys(exp)
    if not r.exists(k.meta):
        raise UnknownExperiment(exp)
    return set_state_if(r, k.meta, ExperimentState.RUNNING, ExperimentState.STOPPED, reason, now_ms())  # never overwrites done


# ``pbt local`` pauses an experiment it cannot run now (an interrupted run, or an older one in a work
# dir where a new one starts): the meta state is ``stopped`` with a reason that starts with PAUSED,
# so workers skip its queued segments and arbiters leave it alone, as for any stopped experiment,
# and ``pbt local --resume`` sets it running again. No fleet but ``pbt local``'s ever sees a pause.
PAUSED = "paused"


def is_paused(meta: Meta) -> bool:
    return meta.state is ExperimentState.STOPPED and (meta.reason or "").startswith(PAUSED)


def pause(r: Any, exp: str, why: str) -> bool:
    """Pause a running experiment (``stopped``, reason "paused: WHY"); False if it was not running."""
    return set_state_if(r, Keys(exp).meta, ExperimentState.RUNNING, ExperimentState.STOPPED, f"{PAUSED}: {why}",
                        now_ms())


def unpause(r: Any, exp: str) -> bool:
    """Set a paused experiment running again (a running one is left as is); False if it is neither.
    Where its members stand is rebuilt in the transaction that sets it running: a round timer
    (``control.synch.due``) reads a missing ``reached`` as "every round complete", and an arbiter that
    saw it stopped drops it (``control.trim.drop_rounds``) only while it is not running."""
    k = Keys(exp)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.meta)
                meta = Meta.read(pipe, k.meta, "state", "reason")
                if not is_paused(meta):
                    pipe.unwatch()
                    return meta.state is ExperimentState.RUNNING
                live = _standing(r, exp)  # read aside: nothing moves a paused run's members
                pipe.multi()
                if live:
                    pipe.zadd(k.reached, live, nx=True)
                pipe.hset(k.meta, mapping=Meta.fields(state=ExperimentState.RUNNING))
                pipe.hdel(k.meta, *Meta.names("reason", "done_ms"))
                pipe.execute()
                break
            except redis.WatchError:
                continue
    return True


def _standing(r: Any, exp: str) -> dict[str, int]:
    """Where each live member stands (exploit.compare = "step", or synchronous rounds; else nothing to
    track), for a stopped experiment that runs again.

    An arbiter that sees the experiment stop drops its boards and tracking; one that was not running
    (a local pause stops the daemons first) dropped nothing. Either way the members are tracked again
    from their last scored step (or the point a replacement restarted them from, when lower), so no
    board a lagging member still needs is trimmed and no round completes without it."""
    cfg = load_config(r, exp)
    if cfg.exploit.compare != "step" and not cfg.exploit.synch:
        return {}
    k = Keys(exp)
    fields = Member.names("state", "scored_step", "train_s", "step")
    pipe = r.pipeline(transaction=False)
    for m in member_ids(cfg.population):
        pipe.hmget(k.member(m), *fields)
    period = cfg.ready.seconds

    def point(rec: Member) -> int:  # as control.decide.Decider.ready_point numbers boards
        if period:
            return round((rec.train_s or 0.0) / period)
        if rec.state is MemberState.WAITING:  # parked at its scored step (its step field is its segment's start)
            return rec.scored_step or 0
        return min(rec.scored_step or 0, rec.step)  # a member replaced since it scored restarts below it

    recs = zip(member_ids(cfg.population), (Member.pick(fields, row) for row in pipe.execute()), strict=True)
    return {m: point(rec) for m, rec in recs if not (rec.state and rec.state.ended)}
