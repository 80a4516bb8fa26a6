"""Where a segment's trainable comes from: warm (the live model), cold (a checkpoint loaded into
the live object), fresh (constructed), or recovered (its start checkpoint was bad: the best good
one in the population instead, or a fresh start)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.core import settings
from pbt_mq.core.hooks import Hooks
from pbt_mq.core.ids import member_seed
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Member
from pbt_mq.core.protocol import CheckpointRef, SegmentCommand
from pbt_mq.state.recovery import donors, quarantine
from pbt_mq.store import checkpoint
from pbt_mq.store.base import ChecksumError, MissingObject, Store
from pbt_mq.store.checkpoint import UnsafeCheckpoint
from pbt_mq.worker.loop import Calls, is_function
from pbt_mq.worker.trainable import import_trainable
from pbt_mq.worker.uploads import await_upload

log = logging.getLogger(__name__)
BAD = (ChecksumError, MissingObject, UnsafeCheckpoint)


@dataclass(frozen=True)
class Start:
    step: int
    key: str | None


@dataclass
class Live:
    """The model a worker trained last, kept for a warm next segment."""

    member: str
    key: str
    trainable: Any


class Loader:
    def __init__(self, r: Any, device: str, hooks: Hooks) -> None:
        self.legacy = False
        self.r = r
        self.device = device
        self.hooks = hooks
        self.calls = Calls(device)  # the loop API: the call of a user's function this worker keeps
        self.trainables: tuple[str, ...] = settings.read("PBT_TRAINABLES") or ()  # () : any module

    def obtain(self, cfg: Experiment, cmd: SegmentCommand, store: Store, live: Live | None,
               legacy: bool = False) -> tuple[Any, str, Start]:
        """The trainable to train and where its state came from: warm, cold, fresh or recovered.
        ``legacy``: the experiment predates this checkpoint format (its ``.pt`` objects load)."""
        self.legacy = legacy
        self.calls.reassign(cmd)
        self.charge_misuse()
        if live is not None and not self.calls.usable(live.trainable):
            live = None  # a call of a function that is over
        if cmd.start is not None and live is not None and live.key == cmd.start.key:
            return live.trainable, "warm", Start(cmd.step, cmd.start.key)
        if cmd.start is None:  # a fresh start needs fresh weights, not the live model's
            return self.construct(cfg, cmd), "fresh", Start(0, None)
        trainable = live.trainable if live is not None else self.construct(cfg, cmd)
        try:
            state = self.load(store, cmd.start, cmd.experiment)
        except BAD as exc:
            return self._recover(cfg, cmd, store, trainable, exc)
        trainable.load_state_dict(state["state"])
        return trainable, "cold", Start(cmd.step, cmd.start.key)

    def _recover(self, cfg: Experiment, cmd: SegmentCommand, store: Store, trainable: Any,
                 exc: Exception) -> tuple[Any, str, Start]:
        """The start checkpoint is corrupt or gone: take it off the leaderboard and start from the
        best good checkpoint in the population, or from scratch if there is none."""
        log.error("%s %s seq=%d: %s; recovering", cmd.experiment, cmd.member, cmd.seq, exc)
        bad = {cmd.start.key} if cmd.start else set()
        quarantine(self.r, cmd.experiment, cmd.start.key if cmd.start else "", str(exc))
        for ref, step in donors(self.r, cmd.experiment):
            if ref.key in bad:
                continue
            try:
                state = self.load(store, ref, cmd.experiment)
            except BAD as again:
                bad.add(ref.key)
                quarantine(self.r, cmd.experiment, ref.key, str(again))
                continue
            trainable.load_state_dict(state["state"])
            log.warning("%s %s: recovered from %s (step %d)", cmd.experiment, cmd.member, ref.key, step)
            return trainable, "recovered", Start(step, ref.key)
        log.warning("%s %s: no good checkpoint left; starting afresh", cmd.experiment, cmd.member)
        return self.construct(cfg, cmd), "recovered", Start(0, None)

    def load(self, store: Store, ref: CheckpointRef, exp: str) -> Any:
        """Download and verify; a checkpoint still being uploaded (overlap_upload) is waited for."""
        t0 = time.perf_counter()
        try:
            state = checkpoint.load(store, ref, map_location=self.device, legacy_ok=self.legacy)
        except MissingObject:
            await_upload(self.r, exp, ref.key)  # and once more even if it was not marked: it may just have landed
            state = checkpoint.load(store, ref, map_location=self.device, legacy_ok=self.legacy)
        if self.hooks:
            self.hooks.checkpoint_loaded(exp, ref.size, time.perf_counter() - t0)
        return state

    def charge_misuse(self) -> None:
        """A call that went on after its run was done (the loop API) is said on the member it served, where
        ``pbt status`` shows it; the segment that comes next is not charged for it."""
        while self.calls.misuse:
            exp, member, text = self.calls.misuse.pop(0)
            if member:
                self.r.hset(Keys(exp).member(member), mapping=Member.fields(error=text[-4000:]))

    def construct(self, cfg: Experiment, cmd: SegmentCommand) -> Any:
        """A new trainable for the member, seeded as every replay seeds it (``torch.manual_seed`` first)."""
        cls = import_trainable(cfg.trainable, self.trainables)
        if is_function(cls):  # the loop API: a call of the function, seeded as it starts
            call = self.calls.start(cls, cmd.experiment, cfg.seed, cfg.metrics or cfg.metric, cfg.trainable_args, cmd)
            self.charge_misuse()
            return call
        seed = member_seed(cfg.seed, cmd.member) if cmd.seed is None else cmd.seed  # a replacement's own seed
        try:
            import torch  # workers have torch; a trainable without it still constructs

            torch.manual_seed(seed)
        except ImportError:  # pragma: no cover
            pass
        return cls(dict(cmd.hparams), seed=seed, device=self.device, **cfg.trainable_args)
