"""Members and experiments reaching their end, each counted exactly once."""

from __future__ import annotations

import json

import redis

from .config import Experiment
from .experiment import DONE, FAILED, RUNNING, member_ids, now_ms
from .keys import Keys
from .scripts import set_state_if


def fail_member(r: redis.Redis, cfg: Experiment, exp: str, member: str, seq: int, reason: str) -> bool:
    """Mark a member failed (it leaves the leaderboard); False if it had already ended."""
    k = Keys(exp)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(k.member(member))
                state = (pipe.hget(k.member(member), "state") or b"").decode()
                if state in (DONE, FAILED):
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(k.member(member), mapping={"state": FAILED, "error": reason, "updated_ms": now_ms()})
                pipe.zrem(k.scores, member)
                pipe.xadd(
                    k.lineage,
                    {"member": member, "seq": seq, "action": FAILED, "reason": reason[-500:], "ops": "[]"},
                )
                pipe.hincrby(k.meta, "finished", 1)
                finished = pipe.execute()[-1]
                break
            except redis.WatchError:
                continue
    complete_if_all_finished(r, cfg, exp, int(finished))
    return True


def complete_if_all_finished(r: redis.Redis, cfg: Experiment, exp: str, finished: int) -> None:
    if finished < cfg.population:
        return
    k = Keys(exp)
    pipe = r.pipeline(transaction=False)
    for m in member_ids(cfg.population):
        pipe.hget(k.member(m), "state")
    states = [(s or b"").decode() for s in pipe.execute()]
    n_failed = states.count(FAILED)
    if n_failed == len(states):
        set_state_if(r, k.meta, RUNNING, FAILED, "every member failed", now_ms())
    else:
        reason = f"all members finished ({n_failed} failed)" if n_failed else "all members finished"
        set_state_if(r, k.meta, RUNNING, DONE, reason, now_ms())


def hparams_json(hp: dict) -> str:
    return json.dumps(hp, sort_keys=True)
