"""``pbt replay``: reproduce an exported result without a population.

``replay`` trains one trainable along a schedule, with no Redis, store or population:
construct it the way the worker that made the chain's first segment did (same class,
``trainable_args``, hyperparameters, ``seed`` and ``torch.manual_seed(seed)`` first),
then for each segment ``apply(hparams)``, train exactly ``to_step - from_step`` steps
and ``evaluate()``. An exploit in the chain needs no special step: the donor's own
earlier segments are the chain's earlier segments, so the replayed state *is* the
state the member inherited. This is Ray Tune's "PBT replay" made exact: the chain
follows checkpoint keys, not trial ids, and carries the seed. It reproduces the run
bit for bit when the trainable's state_dict holds all of its state (model, optimizer,
RNG) and its arithmetic is deterministic on the device.

A function (the loop API) is replayed the same way: one call of it, fed the schedule's
segments as assignments (``Scripted``): the first a fresh start, each next one the same call
continuing with the segment's member, seed and hyperparameters, and where the run copied a
donor, the state the call reported last, saved and loaded back as a worker would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbt_mq.core.ids import member_seed
from pbt_mq.observe.export import FORMAT, ScheduleError, sha256_file
from pbt_mq.store.base import ChecksumError
from pbt_mq.store.checkpoint import load_checkpoint, serialize
from pbt_mq.store.format_read import decode
from pbt_mq.worker.loop import is_function, seed_torch
from pbt_mq.worker.session import Assignment, Bound, Run, SessionError
from pbt_mq.worker.trainable import import_trainable


@dataclass
class ReplayResult:
    segments: list[dict[str, Any]] = field(default_factory=list)  # step, recorded, replayed per segment
    final_score: float = math.nan
    recorded_score: float = math.nan
    state: Any = None

    @property
    def exact(self) -> bool:
        return self.final_score == self.recorded_score or (math.isnan(self.final_score) and math.isnan(self.recorded_score))


def load_schedule(path: str | Path) -> dict[str, Any]:
    """Read and check a schedule file (or the schedule.json in a directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / "schedule.json"
    try:
        sched = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ScheduleError(f"{p}: cannot read the schedule ({exc})") from None
    check_schedule(sched, str(p))
    return sched


def check_schedule(sched: Any, where: str) -> None:
    if not isinstance(sched, dict) or sched.get("format") != FORMAT:
        raise ScheduleError(f"{where}: format: expected {FORMAT!r} (a file written by `pbt export`)")
    for name, kind in (("trainable", str), ("trainable_args", dict), ("seed", int), ("metric", str), ("segments", list)):
        if not isinstance(sched.get(name), kind):
            raise ScheduleError(f"{where}: {name}: missing or not a {kind.__name__}")
    segs = sched["segments"]
    if not segs:
        raise ScheduleError(f"{where}: segments: empty")
    if segs[0]["start"]["kind"] != "init" or segs[0]["from_step"] != 0:
        raise ScheduleError(f"{where}: segments[0]: the chain does not start from a fresh trainable (lineage trimmed?)")
    for i, (a, b) in enumerate(zip(segs, segs[1:], strict=False), start=1):
        if b["from_step"] != a["to_step"] or b["start"]["ckpt_key"] != a["ckpt_key"]:
            raise ScheduleError(f"{where}: segments[{i}]: does not start where segments[{i - 1}] ended")


def replay(
    sched: dict[str, Any], device: str = "cpu", on_segment: Callable[[dict[str, Any]], None] | None = None
) -> ReplayResult:
    """Train one trainable along ``sched``; per segment, compare the score with the recorded one."""
    import torch  # replay trains: torch is needed here, and only here among the inspection commands

    cls = import_trainable(sched["trainable"])
    if is_function(cls):
        return Scripted(sched, device, on_segment).run(cls)
    segs = sched["segments"]
    seed = int(sched["seed"])
    torch.manual_seed(seed)  # as worker.loading does before constructing
    t = cls(dict(segs[0]["hparams"]), seed=seed, device=device, **sched["trainable_args"])
    res = ReplayResult(recorded_score=float(segs[-1]["score"]))
    for s in segs:
        t.apply(dict(s["hparams"]))
        n = int(s["to_step"]) - int(s["from_step"])
        if sched.get("train_calls") == "step":
            for _ in range(n):
                t.train(1)
        else:
            t.train(n)
        score = float(t.evaluate()[sched["metric"]])
        row = {"member": s["member"], "from_step": s["from_step"], "to_step": s["to_step"],
               "recorded": float(s["score"]), "replayed": score}
        res.segments.append(row)
        if on_segment:
            on_segment(row)
    res.final_score = res.segments[-1]["replayed"]
    res.state = t.state_dict()
    return res


class Scripted:
    """A ``worker.session`` channel that feeds one call of a function the schedule's segments."""

    def __init__(self, sched: dict[str, Any], device: str,
                 on_segment: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.sched, self.device, self.on_segment = sched, device, on_segment
        self.segs = sched["segments"]
        self.exp_seed = int(sched.get("experiment_seed", 0))
        self.res = ReplayResult(recorded_score=float(self.segs[-1]["score"]))
        self.i = 0
        self._run: Run | None = None
        self.error: SessionError | None = None
        self.seed: int | None = None
        self.member = ""

    def assignment(self, i: int, state: Any) -> Assignment:
        """Segment ``i`` as a worker assigns it; ``run.seed`` as the worker's call has it: a replacement's
        own seed from its restart on (kept for the call), else the member's."""
        s = self.segs[i]
        member = str(s["member"])
        given = s["start"].get("seed")
        if given is not None:
            self.seed = int(given)
        elif self.seed is None or member != self.member:
            self.seed = member_seed(self.exp_seed, member) if "experiment_seed" in self.sched else int(self.sched["seed"])
        self.member = member
        return Assignment(experiment=str(self.sched.get("experiment", "replay")), member=member, seed=self.seed,
                          hparams=dict(s["hparams"]), step=int(s["from_step"]), state=state, device=self.device,
                          metric=self.sched["metric"], steps=int(s["to_step"]) - int(s["from_step"]),
                          objectives=tuple(self.sched.get("metrics") or ())[1:])

    def run(self, fn: Callable[..., Any]) -> ReplayResult:
        seed_torch(int(self.sched["seed"]))  # as a worker does before a call starts
        with Bound(self):
            fn(**self.sched["trainable_args"])
        if self.error is not None:
            raise self.error
        if self.i < len(self.segs):
            raise SessionError(f"{self.sched['trainable']} returned after {self.i} of {len(self.segs)} segments,"
                               " while run.done was false")
        self.res.final_score = self.res.segments[-1]["replayed"]
        return self.res

    def current(self) -> Run:
        if self._run is None:
            self._run = Run(self, self.assignment(0, None))
        return self._run

    def report(self, run: Run, metrics: dict[str, float], step: int, state: Any) -> Run:
        s = self.segs[self.i]
        row = {"member": s["member"], "from_step": s["from_step"], "to_step": s["to_step"],
               "recorded": float(s["score"]), "replayed": metrics[self.sched["metric"]]}
        self.res.segments.append(row)
        if self.on_segment:
            self.on_segment(row)
        self.res.state = _round_trip(state)  # what the checkpoint holds, before the function goes on
        self.i += 1
        if self.i == len(self.segs):
            self._run = Run(self, run._a, done=True)
        else:  # an inheritance hands over the saved state, as a cold start would; otherwise keep what you hold
            copied = self.segs[self.i]["start"].get("kind") in ("exploit", "replaced")  # from a donor's checkpoint
            self._run = Run(self, self.assignment(self.i, _round_trip(state) if copied else None))
        return self._run

    def broken(self, exc: SessionError) -> None:
        self.error = exc


def _round_trip(state: Any) -> Any:
    """``state`` saved and loaded back, as a checkpoint (a copy the function cannot change any more)."""
    data, _, _ = serialize(state, "replay.safetensors")
    return decode(data, "the replayed state")


def same_state(a: Any, b: Any) -> bool:
    """Bitwise equality of two state dicts (tensors and arrays compared exactly, containers recursively)."""
    import torch  # only called on replayed states, which torch made

    if type(a).__module__ == "numpy" or type(b).__module__ == "numpy":
        import numpy as np  # a numpy array or scalar in the state: numpy is there

        return type(a) is type(b) and np.asarray(a).dtype == np.asarray(b).dtype \
            and bool(np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind in "fc"))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def load_exported(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Load an exported checkpoint safely (``pbt_mq.load_checkpoint``), after checking its sha256 if given."""
    if sha256 is not None and sha256_file(path) != sha256:
        raise ChecksumError(f"{path}: sha256 does not match the schedule's final.sha256; not loading it")
    return load_checkpoint(path)


