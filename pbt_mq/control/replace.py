"""Replacing a member whose segment failed for good (``worker.on_failure = "replace"``).

A ``FailedEvent`` (``state.failure``) is decided like a ready event with a NaN score: ``decide.lua``
takes the member off the leaderboard and runs the exploit rule on the latest scores (of the members past
the burn-in), so a truncation or tournament rule hands it a donor from the top. The donor's checkpoint
must be below ``stop.steps`` (else the best member below it on that board takes its place); the member
restarts from it with the donor's values explored, as after an exploit. With no donor (nobody has a
checkpoint yet, the member is still in its burn-in, or ``exploit.rule = "none"``: random search replaces a
failed trial by a new one) it restarts fresh, its values resampled from the prior and its trainable built
with a new seed (``core.ids.replacement_seed``), which the command carries and the lineage records.

Bounded: a member replaced ``worker.max_replacements`` times in a row without getting past the step it
failed at (a failure at or below the step of the last failed segment counts one more) is failed by its
next failure, so a trainable that always raises, or that fails every time it gets to some step, fails
every member, and the experiment ends failed with the error (``state.finish``). A member that got past
it (from a donor's later checkpoint, or by training on) starts a new count: rare failures at random
never exhaust it. One MULTI per decision, exactly once per (member, seq):
the event's seq is the idempotency key, as for ready events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import redis

from pbt_mq.broker.scripts import call as call_script
from pbt_mq.broker.scripts import text
from pbt_mq.config.experiment import Experiment
from pbt_mq.control.decide import SNAPSHOT_MAX, Decider, Plan, Prepared, Reply
from pbt_mq.control.pyrule import pick_in_python
from pbt_mq.control.routing import Queues
from pbt_mq.core.failed import FailedEvent
from pbt_mq.core.ids import entry_ms, now_ms, replacement_seed
from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, Member, ScoredCheckpoint, Why
from pbt_mq.core.protocol import CheckpointRef, ProtocolError, SegmentCommand
from pbt_mq.core.space import sample_all
from pbt_mq.rules import window
from pbt_mq.rules.base import ExploreContext, decision_rng
from pbt_mq.state.finish import fail_member, last_line
from pbt_mq.state.segments import enqueue_segment

log = logging.getLogger(__name__)
History = Callable[[int], Sequence[Lineage]]


def prepare(decider: Decider, ev: FailedEvent) -> Prepared:
    """decide.lua's call for a failed segment: a NaN score, ranked on the latest scores."""
    cfg, k = decider.cfg, Keys(ev.experiment)
    rng = decision_rng(cfg.seed, ev.member, ev.seq)
    ranked = not cfg.exploit.in_burn_in(ev.step)
    python = ranked and (decider.exploit.lua is None or cfg.multi or cfg.exploit.python)
    mode = (decider.exploit.lua or "none") if ranked and not python else "none"
    u = rng.random() if mode != "none" else 0.0
    return Prepared([k.member(ev.member), k.scores, k.ckpts, k.meta, decider.board_key(k, None), k.boards, k.reached,
                     k.windows], [
        ev.member, ev.seq, "nan", 0, "", mode, cfg.exploit.quantile, repr(u), SNAPSHOT_MAX, cfg.exploit.ties, "",
        cfg.exploit.burn_in_steps, ev.step, "",  # a failure never waits for a round: the member restarts now
        cfg.exploit.window,
    ], rng, math.nan, "", False, "latest", None, python=python)


class Replacer:
    """Decides failed events, one at a time (they are rare); shared by every experiment of an arbiter."""

    def __init__(self, r: Any, queues: Queues) -> None:
        self.r = r
        self.queues = queues

    def decide(self, decider: Decider, ev: FailedEvent, entry_id: bytes, history: Callable[[Any], History]) -> str:
        """"replaced", "failed" (bounded, or its experiment ended) or "duplicate"."""
        cfg, k = decider.cfg, Keys(ev.experiment)
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(k.member(ev.member))
                    prep = prepare(decider, ev)
                    reply = pick_in_python(pipe, decider, prep, call_script(pipe, "decide", prep.keys, prep.args))
                    if reply.status == "dup":
                        pipe.unwatch()
                        self.r.xack(k.events, GROUP, entry_id)
                        return "duplicate"
                    if reply.status in ("ahead", "bad"):
                        raise ProtocolError(f"seq: failed event for seq {ev.seq} but {ev.member} is at seq {reply.meta_state}")
                    h = Member.read(pipe, k.member(ev.member), "replaced", "replaced_step")
                    in_a_row = h.replaced + 1 if h.replaced_step is not None and ev.step <= h.replaced_step else 1
                    why = self._refusal(cfg, reply, in_a_row)
                    if why:
                        pipe.unwatch()
                        fail_member(self.r, cfg, ev.experiment, ev.member, ev.seq, f"{why}: {ev.error}")
                        self.r.xack(k.events, GROUP, entry_id)
                        return "failed"
                    plan = self.plan(decider, ev, prep, reply, pipe, entry_ms(entry_id), history(pipe))
                    self._write(pipe, cfg, ev, plan, in_a_row, entry_id)
                    break
                except redis.WatchError:
                    continue
        log.warning("%s %s seq=%d replaced: %s (%s in a row); its segment failed: %s", ev.experiment, ev.member,
                    ev.seq, f"from {plan.cmd.parent}" if plan.cmd and plan.cmd.parent else "fresh", in_a_row,
                    last_line(ev.error))
        return "replaced"

    @staticmethod
    def _refusal(cfg: Experiment, reply: Reply, in_a_row: int) -> str:
        if reply.meta_state != ExperimentState.RUNNING:
            return f"its segment failed after the experiment ended ({reply.meta_state or 'gone'})"
        if in_a_row > cfg.worker.max_replacements:
            return (f"failed again after {in_a_row - 1} replacements in a row without getting past the step it"
                    f" failed at (worker.max_replacements = {cfg.worker.max_replacements})")
        return ""

    def plan(self, decider: Decider, ev: FailedEvent, prep: Prepared, reply: Reply, pipe: Any, ready_ms: int,
             history: History) -> Plan:
        """The restart: the rule's donor if its checkpoint is below the stop, else the best such one on the
        board, else fresh from the prior (explore or resample with the decision's rng, after the rule's draw)."""
        cfg, rng = decider.cfg, prep.rng
        pick, record = reply.donor or None, reply.donor_record
        donor, source = None, None
        start_window = ""  # exploit.window: a fresh start has no scores yet
        picked = ScoredCheckpoint.read(record) if pick else None
        if pick and picked is not None and self._usable(cfg, picked):
            donor, source, start_window = pick, picked, reply.donor_window
        elif decider.exploit.lua != "none" and (prep.args[5] != "none" or prep.python):  # the rule gave nothing usable
            donor, source = self._best_usable(cfg, pipe, prep, reply)
            if donor and cfg.exploit.window > 1:
                start_window = window.encode(window.parse(pipe.hget(prep.keys[7], donor)))
        common = dict(experiment=ev.experiment, member=ev.member, seq=ev.seq + 1, ready_ms=ready_ms)
        if donor and source:
            ctx = ExploreContext(cfg.spaces, cfg.population, ev.member, source.step, cfg.higher_is_better,
                                 history(decider.explore.history_size(cfg.population)))
            hp, ops = decider.explore.explore(source.hparams, ctx, rng)
            cmd = SegmentCommand(step=source.step, hparams=hp, why=Why.EXPLOIT.value, parent=donor,
                                 start=CheckpointRef(source.key, source.sha256, source.size), parent_step=source.step,
                                 train_s=source.train_s if source.train_s is not None else ev.train_s,
                                 **common, **cfg.first_target(source.step))
        else:
            hp = sample_all(cfg.spaces, rng)
            ops = [f"{name}: resampled from the prior" for name in sorted(hp)]
            cmd = SegmentCommand(step=0, hparams=hp, why=Why.START.value, seed=replacement_seed(cfg.seed, ev.member,
                                 ev.seq), **common, **cfg.first_target(0))
        facts = {"n": reply.n, "worse": reply.worse, "better": reply.better, "k": reply.k}
        board = reply.board if reply.board is not None or reply.n > SNAPSHOT_MAX else []  # empty, not too big
        return Plan(Action.REPLACED.value, cmd, math.nan, ops=ops, reason=ev.error, snapshot=board,
                    declined_donor=pick if pick != donor else None, facts=facts, board="latest",
                    window=start_window if cfg.exploit.window > 1 else None, windows=reply.windows)

    @staticmethod
    def _usable(cfg: Experiment, d: ScoredCheckpoint) -> bool:
        return cfg.stop.steps is None or d.step < cfg.stop.steps

    def _best_usable(self, cfg: Experiment, pipe: Any, prep: Prepared,
                     reply: Reply) -> tuple[str | None, ScoredCheckpoint | None]:
        board = reply.board or [(m.decode(), s) for m, s in pipe.zrevrange(prep.keys[4], 0, SNAPSHOT_MAX - 1,
                                                                             withscores=True)]
        member = text(prep.args[0])  # sub-populations: a replacement also copies only slower members
        members = [m for m, _ in board if m != member and cfg.exploit.may_copy(member, m)]
        for m, raw in zip(members, pipe.hmget(prep.keys[2], *members) if members else [], strict=True):
            if (d := ScoredCheckpoint.read(raw)) is not None and self._usable(cfg, d):
                return m, d
        return None, None

    def _write(self, pipe: Any, cfg: Experiment, ev: FailedEvent, plan: Plan, in_a_row: int, entry_id: bytes) -> None:
        """One MULTI: the member restarted (next seq queued), the lineage record, the event acknowledged."""
        k, cmd = Keys(ev.experiment), plan.cmd
        assert cmd is not None
        rec = Lineage(
            member=ev.member, seq=ev.seq, action=Action.REPLACED, start_step=ev.step, step=ev.step, score=math.nan,
            start_key=ev.start_key or "", ckpt_key="", hparams=ev.hparams, next_hparams=cmd.hparams,
            parent=cmd.parent or "", parent_step=cmd.parent_step, next_start_key=cmd.start.key if cmd.start else "",
            ops=plan.ops, reason=plan.reason, worker=ev.worker, declined_donor=plan.declined_donor, board=plan.board,
            seed=cmd.seed, snapshot=[list(e) for e in plan.snapshot] if plan.snapshot is not None else None,
            windows=plan.windows,
            **(plan.facts or {}),
        )
        member = dict(step=cmd.step, hparams=cmd.hparams, why=cmd.why, reaped=0, attempt=0, replaced=in_a_row,
                      replaced_step=ev.step, score=math.nan, updated_ms=now_ms(), parent=cmd.parent or "",
                      parent_step=cmd.parent_step, **({} if plan.window is None else {"window": plan.window}))
        pipe.multi()
        pipe.xadd(k.lineage, {"parent_step": "", "next_hparams": "", **rec.encode()})
        enqueue_segment(pipe, self.queues.get(cfg, ev.experiment), cfg, cmd, member=member)
        if cfg.exploit.compare == "step" or cfg.exploit.synch:  # boards and rounds from its restart point on
            pipe.zadd(k.reached, {ev.member: cfg.ready_point(cmd.step, cmd.train_s)})
        pipe.xack(k.events, GROUP, entry_id)
        pipe.execute()
