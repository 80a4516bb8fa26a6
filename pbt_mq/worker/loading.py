"""Where a segment's trainable comes from: warm (the live model), cached (a checkpoint this worker
holds in memory, ``worker.cache``, loaded into the live object: no download), cold (downloaded),
fresh (constructed), or recovered (its start checkpoint was bad: the best good one in the
population instead, or a fresh start). Construction is timed apart from loading (``build_s``): a
first segment's imports and data are not a checkpoint's download."""

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
from pbt_mq.store.base import ChecksumError, MissingObject, Store, new_buffer
from pbt_mq.store.checkpoint import UnsafeCheckpoint
from pbt_mq.worker.cache import CheckpointCache
from pbt_mq.worker.loop import Calls, is_function
from pbt_mq.worker.trainable import import_trainable
from pbt_mq.worker.uploads import await_upload

log = logging.getLogger(__name__)
BAD = (ChecksumError, MissingObject, UnsafeCheckpoint)


def copy_of(data: Any) -> memoryview:
    """A private copy of a buffer (an optimizer's ``load_state_dict`` keeps the CPU tensors it is given)."""
    view = memoryview(data)
    out = new_buffer(view.nbytes)
    out[:] = view
    return out


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
    def __init__(self, r: Any, device: str, hooks: Hooks, cache: CheckpointCache | None = None) -> None:
        self.legacy = False
        self.cache = cache if cache is not None else CheckpointCache(0)
        self.build_s = 0.0  # of the last obtain(): constructing a trainable (imports, data, weights)
        self.r = r
        self.device = device
        self.hooks = hooks
        self.calls = Calls(device)  # the loop API: the call of a user's function this worker keeps
        self.trainables: tuple[str, ...] = settings.read("PBT_TRAINABLES") or ()  # () : any module

    def obtain(self, cfg: Experiment, cmd: SegmentCommand, store: Store, live: Live | None,
               legacy: bool = False) -> tuple[Any, str, Start]:
        """The trainable to train and where its state came from: warm, cached, cold, fresh or recovered.
        ``legacy``: the experiment predates this checkpoint format (its ``.pt`` objects load)."""
        self.legacy = legacy
        self.build_s = 0.0
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
            state, source = self.load(store, cmd.start, cmd.experiment)
        except BAD as exc:
            return self._recover(cfg, cmd, store, trainable, exc)
        trainable.load_state_dict(state["state"])
        return trainable, source, Start(cmd.step, cmd.start.key)

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
                state, _ = self.load(store, ref, cmd.experiment)
            except BAD as again:
                bad.add(ref.key)
                quarantine(self.r, cmd.experiment, ref.key, str(again))
                continue
            trainable.load_state_dict(state["state"])
            log.warning("%s %s: recovered from %s (step %d)", cmd.experiment, cmd.member, ref.key, step)
            return trainable, "recovered", Start(step, ref.key)
        log.warning("%s %s: no good checkpoint left; starting afresh", cmd.experiment, cmd.member)
        return self.construct(cfg, cmd), "recovered", Start(0, None)

    def load(self, store: Store, ref: CheckpointRef, exp: str) -> tuple[Any, str]:
        """``ref``'s checkpoint and where it came from: "cached" (this worker's memory, verified) or
        "cold" (downloaded and verified). A checkpoint still being uploaded (overlap_upload) is waited for."""
        legacy = self.legacy and checkpoint.is_legacy(ref.key)
        if not legacy:
            held = self.cache.get(ref)
            if held is not None:  # decoded from a copy: a trainable may keep the tensors and train them in place
                return checkpoint.decode(copy_of(held), ref, self.device), "cached"
        t0 = time.perf_counter()
        try:
            state = self._download(store, ref, legacy)
        except MissingObject:
            await_upload(self.r, exp, ref.key)  # and once more even if it was not marked: it may just have landed
            state = self._download(store, ref, legacy)
        if self.hooks:
            self.hooks.checkpoint_loaded(exp, ref.size, time.perf_counter() - t0)
        return state, "cold"

    def _download(self, store: Store, ref: CheckpointRef, legacy: bool) -> Any:
        if legacy:
            return checkpoint.load(store, ref, map_location=self.device, legacy_ok=True)
        # not cached: the download buffer is reused by the next download once the trainable has copied
        # what it needs (first-touching fresh memory costs as much as hashing it), and what a worker
        # downloads (a donor's checkpoint) is held by the worker that wrote it
        return checkpoint.decode(checkpoint.fetch(store, ref), ref, self.device)

    def charge_misuse(self) -> None:
        """A call that went on after its run was done (the loop API) is said on the member it served, where
        ``pbt status`` shows it; the segment that comes next is not charged for it."""
        while self.calls.misuse:
            exp, member, text = self.calls.misuse.pop(0)
            if member:
                self.r.hset(Keys(exp).member(member), mapping=Member.fields(error=text[-4000:]))

    def construct(self, cfg: Experiment, cmd: SegmentCommand) -> Any:
        """A new trainable for the member, seeded as every replay seeds it (``torch.manual_seed`` first);
        the time it takes counts as ``build_s``."""
        t0 = time.perf_counter()
        try:
            return self._construct(cfg, cmd)
        finally:
            self.build_s += time.perf_counter() - t0

    def _construct(self, cfg: Experiment, cmd: SegmentCommand) -> Any:
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
