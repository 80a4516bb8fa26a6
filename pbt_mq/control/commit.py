"""Committing decisions: one MULTI/EXEC writes each member, its lineage record and next segment,
and acknowledges its event, so a decision and its acknowledgement land together.

The member's ``seq`` is the idempotency key (decide.lua refuses an event whose seq is decided),
so a redelivered or reclaimed event changes nothing once its decision is committed.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from pbt_mq.broker.pipes import Replies
from pbt_mq.broker.scripts import set_state_if
from pbt_mq.config.experiment import Experiment
from pbt_mq.control.decide import DUPLICATE, WAITING, Plan
from pbt_mq.control.routing import Queues, Route, routes
from pbt_mq.control.synch import park, unpark
from pbt_mq.core.ids import now_ms
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Member, MemberState
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.state.finish import complete_if_all_finished
from pbt_mq.state.segments import enqueue_segment

log = logging.getLogger(__name__)

Decided = tuple[bytes, ReadyEvent, Plan]  # (event entry id, event, plan)


def lineage_record(ev: ReadyEvent, plan: Plan) -> Lineage:
    """The decision as the lineage log keeps it."""
    cmd = plan.cmd
    return Lineage(
        member=ev.member, seq=ev.seq, action=Action(plan.action), start_step=ev.start_step, step=ev.step,
        score=ev.score, start_key=ev.start_key or "", ckpt_key=ev.checkpoint.key, hparams=ev.hparams,
        next_hparams=cmd.hparams if cmd else None, parent=(cmd.parent or "") if cmd else "",
        parent_step=cmd.parent_step if cmd else None, next_start_key=cmd.start.key if cmd and cmd.start else "",
        ops=plan.ops, reason=plan.reason, worker=ev.worker, declined_donor=plan.declined_donor,
        snapshot=[list(e) for e in plan.snapshot] if plan.snapshot is not None else None,
        board=plan.board, board_at=plan.board_at, objectives=plan.objectives, windows=plan.windows,
        timings=dict(ev.timings_s) or None,  # the event leaves Redis within seconds; pbt stats reads these
        **(plan.facts or {}),
    )


def _lineage_fields(rec: Lineage) -> dict[str, Any]:
    """Release 1 wrote "" for a missing parent_step and next_hparams; so does this one (readers of both)."""
    out = rec.encode()
    out.setdefault("parent_step", "")
    out.setdefault("next_hparams", "")
    return out


class Committer:
    """Writes decided rounds; shared by the one-event and the batched paths of the arbiter."""

    def __init__(self, r: Any, queues: Queues) -> None:
        self.r = r
        self.queues = queues

    def commit_all(self, pipe: Any, cfg: Experiment, exp: str, decided: list[Decided]) -> list[int | None]:
        """One MULTI/EXEC of every decision's writes and XACK (``pipe`` is WATCHing its members);
        returns, per decision, the meta's count of finished members after a "done"."""
        k = Keys(exp)
        route = routes(self.r, self.queues, cfg, exp, [(ev, plan.action, plan.home) for _, ev, plan in decided])
        pipe.multi()
        replies = Replies(pipe)
        for i, (entry_id, ev, plan) in enumerate(decided):
            if plan.action != DUPLICATE:
                self._write(pipe, cfg, ev, plan, route.get(ev.member, Route()), entry_id)
                if plan.action == Action.DONE:
                    replies.name(f"finished {i}")
            pipe.xack(k.events, GROUP, entry_id)
        got = replies.execute()
        return [got.get(f"finished {i}") for i in range(len(decided))]

    def _write(self, pipe: Any, cfg: Experiment, ev: ReadyEvent, plan: Plan, route: Route, entry_id: bytes) -> None:
        """A decision's writes; when it is "done", the last command is the finished count's HINCRBY."""
        k = Keys(ev.experiment)
        cmd = plan.cmd
        member: dict[str, Any] = dict(
            score=ev.score, scored_step=ev.step, ckpt_key=ev.checkpoint.key, ckpt_sha256=ev.checkpoint.sha256,
            ckpt_size=ev.checkpoint.size, ckpt_hparams=ev.hparams, train_s=ev.train_s, updated_ms=now_ms(),
            worker=ev.worker,
        )
        if plan.action == WAITING:  # exploit.synch: no decision yet, no lineage record
            park(pipe, cfg, entry_id, ev, member)
            return
        if cfg.exploit.synch:
            unpark(pipe, ev.experiment, ev.member)
        if cmd:
            member.update(step=cmd.step, hparams=cmd.hparams, why=cmd.why, reaped=0)  # reaped: per segment
            if plan.window is not None:  # exploit.window: the next score joins its start checkpoint's window
                member.update(window=plan.window)
            if plan.action == Action.EXPLOIT:
                member.update(parent=cmd.parent, parent_step=cmd.parent_step, last_exploit=f"{cmd.parent}@{ev.step}")
        else:
            member.update(state=MemberState.DONE, step=ev.step, reason=plan.reason)
        pipe.hset(k.parents, ev.checkpoint.key, ev.start_key or "")
        pipe.xadd(k.lineage, _lineage_fields(lineage_record(ev, plan)))
        if cmd:
            enqueue_segment(pipe, self.queues.get(cfg, cmd.experiment, route.queue), cfg, cmd, member=member,
                            home=route.home)
        else:
            pipe.hset(k.member(ev.member), mapping=Member.fields(**member))
            pipe.zrem(k.reached, ev.member)  # a member that is done holds no board back
            pipe.hincrby(k.meta, "finished", 1)

    def after_all(self, cfg: Experiment, decided: list[Decided], finished: list[int | None]) -> None:
        """What follows committed decisions: the experiment's end when a member hit the target or
        the last one finished. Each on its own: one failing must not skip the others'."""
        for (_, ev, plan), count in zip(decided, finished, strict=True):
            try:
                if plan.target_reached:
                    set_state_if(self.r, Keys(ev.experiment).meta, ExperimentState.RUNNING, ExperimentState.DONE,
                                 f"{ev.member} reached the target score", now_ms())
                if plan.action == Action.DONE:
                    complete_if_all_finished(self.r, cfg, ev.experiment, int(count or 0))
                if plan.action == Action.EXPLOIT and plan.cmd is not None:
                    log.info("%s %s seq=%d exploit %s: %s", ev.experiment, ev.member, ev.seq, plan.cmd.parent,
                             "; ".join(plan.ops))
            except redis.RedisError as exc:
                log.warning("%s %s: after the decision: %s (the reaper finishes the experiment if needed)",
                            ev.experiment, ev.member, exc)
