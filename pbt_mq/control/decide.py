"""Deciding one ready event: decide.lua's call, its reply read as a plan, and explore.

``Decider.prepare`` builds ``decide.lua``'s keys and arguments (the decision's rng takes its
first draw here, for the exploit rule); the script records the score and picks the donor in
O(log n); ``Decider.interpret`` reads its reply by name and, after an exploit, mutates the
donor's hyperparameters with the same rng. Nothing here writes to Redis: committing is
``control.commit``'s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pbt_mq.broker.scripts import text
from pbt_mq.config.experiment import Experiment
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, ExperimentState, Lineage, ScoredCheckpoint, Why
from pbt_mq.core.protocol import CheckpointRef, ProtocolError, ReadyEvent, SegmentCommand
from pbt_mq.rules import window
from pbt_mq.rules.base import ExploreContext, decision_rng
from pbt_mq.rules.registry import RuleError, exploit_rule, explore_rule

SNAPSHOT_MAX = 64  # lineage records carry the leaderboard they saw, up to this size
DUPLICATE = "duplicate"  # an outcome, not a lineage action: the event was decided before
WAITING = "waiting"  # an outcome, not a lineage action: parked until its synchronous round completes (control.synch)


@dataclass
class Plan:
    """What to do with a ready event: the lineage action and, unless done, the next segment."""

    action: str  # an Action value, or DUPLICATE
    cmd: SegmentCommand | None
    score: float  # leaderboard score (higher is better), NaN if unusable
    ops: list[str] = field(default_factory=list)
    reason: str = ""
    target_reached: bool = False
    snapshot: list[tuple[str, float]] | None = None  # the leaderboard the rules saw (n <= SNAPSHOT_MAX)
    declined_donor: str | None = None
    facts: dict[str, int] | None = None  # n, worse, better, k: enough to check any decision
    board: str | None = None  # what the member was ranked against: "step", "time" or "latest"
    board_at: int | None = None  # the board's ready point (step or time)
    objectives: list[float] | None = None  # several metrics: the member's value of each
    window: str | None = None  # exploit.window > 1: the window of the checkpoint its next segment starts from
    windows: dict[str, list[float]] | None = None  # ttest: the windows it compared (for the lineage record)
    home: str = ""  # the worker that wrote the next segment's start checkpoint (control.routing)


@dataclass
class Prepared:
    """decide.lua's call for one event, and what interpreting its reply needs."""

    keys: list[str]
    args: list[Any]
    rng: random.Random
    score: float
    reason: str
    target: bool
    board: str = "latest"
    board_at: int | None = None
    python: bool = False  # the exploit rule runs in Python on the board (a plug-in, or several metrics)
    vector: tuple[float, ...] | None = None  # several metrics: the member's, oriented (None: not finite)


@dataclass(frozen=True)
class Reply:
    """decide.lua's reply, by name (its header documents the positions)."""

    status: str
    meta_state: str = ""
    n: int = 0
    worse: int = 0
    better: int = 0
    k: int = 0
    donor: str = ""
    donor_record: str = ""
    own_window: str = ""  # exploit.window > 1: the member's window with this score (decide.lua wrote it)
    donor_window: str = ""  # ...and the donor's, which an exploit starts from
    board: list[tuple[str, float]] | None = None
    windows: dict[str, list[float]] | None = None  # ttest: the windows it compared (control.pyrule)

    @classmethod
    def parse(cls, raw: Sequence[Any]) -> Reply:
        status = text(raw[0])
        if status != "ok":
            return cls(status, meta_state=text(raw[1]) if len(raw) > 1 else "")
        board = raw[11:]
        return cls(
            status, text(raw[1]), *(int(x) for x in raw[2:6]), donor=text(raw[6]), donor_record=text(raw[8]),
            own_window=window.encode(window.parse(raw[9])), donor_window=window.encode(window.parse(raw[10])),
            board=[(text(m), float(v)) for m, v in zip(board[::2], board[1::2], strict=True)] if board else None,
        )


class Decider:
    """The decisions of one experiment; built once per experiment by the arbiter."""

    def __init__(self, cfg: Experiment) -> None:
        self.cfg = cfg
        self.exploit = exploit_rule(cfg.exploit)
        self.explore = explore_rule(cfg.explore)
        need = self.explore.history_size(cfg.population)
        if need > cfg.lineage.redis_window:  # a plug-in's wish, known once imported (pb2's is checked at launch)
            raise RuleError(f"explore.rule {cfg.explore.rule!r} reads the newest {need} lineage records, but "
                            f"lineage.redis_window keeps {cfg.lineage.redis_window} in Redis: launch it with "
                            f"lineage.redis_window >= {need}")

    def stop_reason(self, ev: ReadyEvent) -> tuple[str, bool]:
        """Why the member is done after this event ('' if it is not), and whether it hit the target score."""
        s = self.cfg.stop
        if s.score is not None and math.isfinite(ev.score):
            if (ev.score >= s.score) if self.cfg.mode == "max" else (ev.score <= s.score):
                return f"reached target {self.cfg.metric} {s.score}", True
        if s.steps is not None and ev.step >= s.steps:
            return f"reached {s.steps} steps", False
        if s.seconds is not None and ev.train_s >= s.seconds:
            return f"trained {s.seconds} s", False
        return "", False

    def ready_point(self, ev: ReadyEvent) -> tuple[str, int | None]:
        """Which board ``ev`` is ranked on: ("step", its step), ("time", its train time in ready
        periods) with exploit.compare = "step", or ("latest", None): every member's last score."""
        if self.cfg.exploit.compare != "step":
            return "latest", None
        return ("time" if self.cfg.ready.seconds is not None else "step"), self.cfg.ready_point(ev.step, ev.train_s)

    def ready_index(self, step: int, train_s: float) -> int:
        """Which ready point of a member this is (1, 2, ...): what ``exploit.subpopulations`` periods count."""
        return self.cfg.ready_point(step, train_s) // (self.cfg.ready.steps or 1)

    def board_key(self, k: Keys, at: int | None) -> str:
        """The sorted set a member is ranked on: its ready point's board, else the latest scores (of the
        members past the burn-in, when there is one)."""
        if at is not None:
            return k.board(at)
        return k.eligible if self.cfg.exploit.burn_in_steps else k.scores

    def prepare(self, ev: ReadyEvent) -> Prepared:
        """decide.lua's keys and arguments for ``ev`` (see the script's header)."""
        k = Keys(ev.experiment)
        score = self.cfg.higher_is_better(ev.score) if math.isfinite(ev.score) else math.nan
        reason, target = self.stop_reason(ev)
        rng = decision_rng(self.cfg.seed, ev.member, ev.seq)
        ranked = (not reason and not self.cfg.exploit.in_burn_in(ev.step)
                  and self.cfg.exploit.due(ev.member, self.ready_index(ev.step, ev.train_s)))
        # in Python: several metrics (Pareto order), sub-populations (a filtered board), ttest and plug-ins
        python = ranked and (self.exploit.lua is None or self.cfg.multi or self.cfg.exploit.python)
        mode = (self.exploit.lua or "none") if ranked and not python else "none"
        u = rng.random() if mode != "none" else 0.0  # the draw the exploit rule takes first
        record = ScoredCheckpoint(ev.checkpoint.key, ev.checkpoint.sha256, ev.checkpoint.size, ev.step, ev.hparams,
                                  ev.train_s, ev.worker)
        board, at = self.ready_point(ev)
        return Prepared([k.member(ev.member), k.scores, k.ckpts, k.meta, self.board_key(k, at), k.boards, k.reached,
                         k.windows], [
            ev.member, ev.seq, repr(score) if math.isfinite(score) else "nan", int(math.isfinite(score)),
            record.to_json(), mode, self.cfg.exploit.quantile, repr(u), SNAPSHOT_MAX, self.cfg.exploit.ties,
            "" if at is None else at, self.cfg.exploit.burn_in_steps, ev.step,
            self.cfg.ready_point(ev.step, ev.train_s) if self.cfg.exploit.synch and not reason else "",
            self.cfg.exploit.window,
        ], rng, score, reason, target, board, at, python=python,
            vector=self.cfg.objectives(ev.metrics) if self.cfg.multi else None)

    def interpret(self, ev: ReadyEvent, prep: Prepared, raw: Sequence[Any] | Reply, ready_ms: int,
                  history: Callable[[int], Sequence[Lineage]]) -> Plan:
        """decide.lua's reply (or, with a rule in Python, ``control.pyrule``'s) as a plan: done, duplicate,
        or the next segment (explore runs here). ``history(n)``: the newest n lineage records, for an
        explore rule that asks for them."""
        reply = raw if isinstance(raw, Reply) else Reply.parse(raw)
        score, reason, target = prep.score, prep.reason, prep.target
        if reply.status == "dup":
            return Plan(DUPLICATE, None, score)
        if reply.status == "ahead":
            raise ProtocolError(f"seq: event is for seq {ev.seq} but {ev.member} is at seq {reply.meta_state}")
        if reply.status == "bad":
            raise ProtocolError(f"{ev.member}'s member hash field {reply.meta_state} is not a number (written by hand?);"
                                " the reaper fails the member")
        if reply.meta_state != ExperimentState.RUNNING:
            reason, target = f"experiment {reply.meta_state or 'gone'}", False
        board: dict[str, Any] = {"board": prep.board, "board_at": prep.board_at}
        if self.cfg.multi:
            board["objectives"] = [ev.metrics.get(name, math.nan) for name in self.cfg.metrics]
        if reply.status == "wait" and not reason:
            return Plan(WAITING, None, score, **board)
        if reason:
            return Plan(Action.DONE.value, None, score, reason=reason, target_reached=target, **board)
        facts = {"n": reply.n, "worse": reply.worse, "better": reply.better, "k": reply.k}
        windowed = self.cfg.exploit.window > 1
        board["windows"] = reply.windows
        common = dict(experiment=ev.experiment, member=ev.member, seq=ev.seq + 1, ready_ms=ready_ms)
        d = ScoredCheckpoint.read(reply.donor_record) if reply.donor else None  # unreadable (by hand): declined
        if reply.donor and d is not None:
            if self.cfg.stop.steps is None or d.step < self.cfg.stop.steps:
                ctx = ExploreContext(self.cfg.spaces, self.cfg.population, ev.member, d.step, self.cfg.higher_is_better,
                                     history(self.explore.history_size(self.cfg.population)))
                hp, ops = self.explore.explore(d.hparams, ctx, prep.rng)
                # the checkpoint's age travels with it, as its step does (release 1's records lack it)
                train_s = ev.train_s if d.train_s is None or prep.board == "latest" else d.train_s
                cmd = SegmentCommand(step=d.step, hparams=hp, why=Why.EXPLOIT.value, parent=reply.donor,
                                     start=CheckpointRef(d.key, d.sha256, d.size), parent_step=d.step, train_s=train_s,
                                     **common, **self.cfg.first_target(d.step))
                return Plan(Action.EXPLOIT.value, cmd, score, ops=ops, snapshot=reply.board, facts=facts,
                            window=reply.donor_window if windowed else None, home=d.worker, **board)
        cmd = SegmentCommand(step=ev.step, hparams=dict(ev.hparams), why=Why.CONTINUE.value, start=ev.checkpoint,
                             train_s=ev.train_s, **common, **self.cfg.first_target(ev.step))
        # a donor is declined when it had already finished (copying it would end this member too)
        # or has no scored checkpoint any more (its latest score was not finite)
        return Plan(Action.CONTINUE.value, cmd, score, snapshot=reply.board, declined_donor=reply.donor or None,
                    facts=facts, window=reply.own_window if windowed else None, home=ev.worker, **board)
