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
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbt_mq.observe.export import FORMAT, ScheduleError, sha256_file
from pbt_mq.store.base import ChecksumError
from pbt_mq.store.checkpoint import load_checkpoint
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


