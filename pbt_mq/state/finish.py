"""Members and experiments reaching their end, each counted exactly once."""

from __future__ import annotations

from typing import Any

import redis

from pbt_mq.broker.scripts import set_state_if
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.ids import member_ids, now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Member, MemberState


def fail_member(r: Any, cfg: Experiment, exp: str, member: str, seq: int, reason: str) -> bool:
    """Mark a member failed (it leaves the leaderboard); False if it had already ended."""
    k = Keys(exp)
    mkey = k.member(member)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(mkey, k.boards)
                state = Member.read(pipe, mkey, "state").state
                if state is not None and state.ended:
                    pipe.unwatch()
                    return False
                boards = [int(float(b)) for b in pipe.zrange(k.boards, 0, -1)]
                pipe.multi()
                pipe.hset(mkey, mapping=Member.fields(state=MemberState.FAILED, error=reason, updated_ms=now_ms()))
                pipe.zrem(k.scores, member)
                for at in boards:  # exploit.compare = "step": a failed member is no donor on any board
                    pipe.zrem(k.board(at), member)
                    pipe.hdel(Keys.vectors(k.board(at)), member)  # several metrics: nor on its Pareto board
                pipe.zrem(k.eligible, member)
                for board in (k.scores, k.eligible):
                    pipe.hdel(Keys.vectors(board), member)
                pipe.zrem(k.reached, member)  # it will report no ready point again
                pipe.xadd(k.lineage, Lineage.fields(member=member, seq=seq, action=Action.FAILED, reason=reason[-4000:],
                                                    ops=[]))
                pipe.hincrby(k.meta, "finished", 1)
                finished = pipe.execute()[-1]
                break
            except redis.WatchError:
                continue
    complete_if_all_finished(r, cfg, exp, int(finished))
    return True


def complete_if_all_finished(r: Any, cfg: Experiment, exp: str, finished: int) -> None:
    """End the experiment once every member is done or failed (failed: when all of them failed)."""
    if finished < cfg.population:
        return
    k = Keys(exp)
    pipe = r.pipeline(transaction=False)
    ids = member_ids(cfg.population)
    for m in ids:
        pipe.hmget(k.member(m), "state", "error")
    members = [Member.pick(("state", "error"), row) for row in pipe.execute()]
    states = [h.state for h in members]
    if any(s is None or not s.ended for s in states):
        return  # the count ran ahead of the members (a hash rewritten by hand): their states decide
    n_failed = states.count(MemberState.FAILED)
    if n_failed == len(states):
        set_state_if(r, k.meta, ExperimentState.RUNNING, ExperimentState.FAILED,
                     f"every member failed; {ids[0]}: {last_line(members[0].error)}"[:1000], now_ms())
    else:
        reason = f"all members finished ({n_failed} failed)" if n_failed else "all members finished"
        set_state_if(r, k.meta, ExperimentState.RUNNING, ExperimentState.DONE, reason, now_ms())


def last_line(error: str) -> str:
    """A failure's gist: the last non-empty line of its traceback (the exception), or the whole reason."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"
