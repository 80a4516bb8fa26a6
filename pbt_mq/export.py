"""``pbt export`` and ``pbt replay``: take a result away, and reproduce it without a population.

``export`` writes a directory a person can carry off: ``checkpoint.pt`` (the member's
checkpoint, verified by sha256 on the way out), ``schedule.json`` (the checkpoint's
ancestry as a replayable schedule) and ``experiment.toml`` (the experiment as it ran,
overrides applied). It needs no torch: bytes are copied, not loaded.

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

import argparse
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .config import ConfigError, Experiment
from .experiment import load_config, member_seed
from .keys import Keys
from .lineage import explain, format_lineage, format_phases, phases, records, target
from .store import ChecksumError, open_store

FORMAT = "pbt-mq.schedule/1"


class ScheduleError(ConfigError):
    """The schedule file cannot be replayed; the text names the field."""


# ---------------------------------------------------------------- export


def build_schedule(cfg: Experiment, exp: str, tgt: dict[str, Any], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything replay needs, and what the run recorded to compare against."""
    first = segments[0]["member"] if segments else tgt["member"]
    return {
        "format": FORMAT,
        "experiment": exp,
        "trainable": cfg.trainable,
        "trainable_args": dict(cfg.trainable_args),
        "seed": member_seed(cfg.seed, first),
        "experiment_seed": cfg.seed,
        "first_member": first,
        "metric": cfg.metric,
        "mode": cfg.mode,
        # A seconds-ready run trained one step per train() call (segment.py's _advance).
        "train_calls": "step" if cfg.ready.seconds is not None else "segment",
        "final": tgt,
        "complete": bool(segments) and segments[0]["start"]["kind"] == "init",
        "phases": phases(segments),
        "segments": segments,
    }


def export(r: redis.Redis, exp: str, out_dir: str | Path, member: str | None = None) -> dict[str, Any]:
    """Write checkpoint.pt, schedule.json and experiment.toml for ``member`` (default: the best)."""
    cfg = load_config(r, exp)
    tgt = target(r, exp, member)
    segments = explain(records(r, exp), tgt["ckpt_key"])
    sched = build_schedule(cfg, exp, tgt, segments)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_url = (r.hget(Keys(exp).meta, "store") or b"").decode()
    copy_verified(store_url, tgt, out / "checkpoint.pt")
    _write_text(out / "schedule.json", json.dumps(sched, indent=2) + "\n")
    header = f"# experiment {exp}, exported with its best checkpoint by `pbt export`\n"
    _write_text(out / "experiment.toml", header + to_toml(cfg.raw))
    return sched


def copy_verified(store_url: str, tgt: dict[str, Any], dest: Path) -> None:
    """Stream the object to ``dest`` while hashing; keep it only if sha256 and size match."""
    store = open_store(store_url)
    part = dest.with_name(f".{dest.name}.part")
    try:
        with open(part, "wb") as f:
            sha, size = store.get_to(tgt["ckpt_key"], f)
        if sha != tgt["sha256"] or size != tgt["size"]:
            raise ChecksumError(
                f"checkpoint {tgt['ckpt_key']}: read sha256 {sha[:12]}… / {size} bytes, but the experiment"
                f" recorded {tgt['sha256'][:12]}… / {tgt['size']} bytes; not exporting a corrupt checkpoint"
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------- TOML (the experiment file)

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def to_toml(raw: dict[str, Any]) -> str:
    """The experiment's raw table as TOML that ``config.load_file`` reads back to the same values."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += _table([k], v)
    return "\n".join(lines) + "\n"


def _table(path: list[str], table: dict[str, Any]) -> list[str]:
    own = [f"{_key(k)} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = ["", "[" + ".".join(_key(p) for p in path) + "]", *own] if own or not table else []
    for k, v in table.items():
        if isinstance(v, dict):
            out += _table([*path, k], v)
    return out


def _key(k: str) -> str:
    return k if _BARE.match(k) else _string(k)


def _string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


# ---------------------------------------------------------------- replay


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
    import torch

    from .trainable import import_trainable

    cls = import_trainable(sched["trainable"])
    segs = sched["segments"]
    seed = int(sched["seed"])
    torch.manual_seed(seed)  # as segment.py does before constructing
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
    """Bitwise equality of two state dicts (tensors compared exactly, containers recursively)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def load_exported(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Load an exported checkpoint safely (weights_only), after checking its sha256 if given."""
    import torch

    if sha256 is not None and sha256_file(path) != sha256:
        raise ChecksumError(f"{path}: sha256 does not match the schedule's final.sha256; not loading it")
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- commands: pbt lineage / export / replay


def add_lineage_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import _redis_opt

    p.add_argument("experiment")
    p.add_argument("--member", default=None, help="whose latest checkpoint to trace (default: the best member)")
    p.add_argument("--json", action="store_true", help="segments, origins and the schedule as JSON")
    _redis_opt(p)
    p.set_defaults(fn=cmd_lineage)


def cmd_lineage(a: argparse.Namespace) -> int:
    from .redisconn import connect

    r = connect(a.redis)
    cfg = load_config(r, a.experiment)
    tgt = target(r, a.experiment, a.member)
    segs = explain(records(r, a.experiment), tgt["ckpt_key"])
    if a.json:
        doc = {"experiment": a.experiment, "metric": cfg.metric, "mode": cfg.mode, "target": tgt,
               "segments": segs, "phases": phases(segs)}
        print(json.dumps(doc, indent=2))
        return 0
    who = f"{tgt['member']}" + ("" if a.member else " (the best member)")
    print(f"{a.experiment}: lineage of {who}, {cfg.metric}={tgt['score']:.6g} at step {tgt['step']}")
    print(f"checkpoint {tgt['ckpt_key']} (sha256 {tgt['sha256'][:16]}…)")
    print(f"ancestry, oldest first ({len(segs)} segments, members {', '.join(_members(segs))}):")
    print(format_lineage(segs, cfg.metric))
    print("hyperparameter schedule:")
    print(format_phases(phases(segs)))
    return 0


def _members(segs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for s in segs:
        if not out or out[-1] != s["member"]:
            out.append(s["member"])
    return out


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import _redis_opt

    p.add_argument("experiment")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--best", action="store_true", help="the best member (the default)")
    who.add_argument("--member", default=None, help="this member's latest checkpoint instead")
    p.add_argument("-o", "--out", required=True, help="directory to write into (created if needed)")
    _redis_opt(p)
    p.set_defaults(fn=cmd_export)


def cmd_export(a: argparse.Namespace) -> int:
    from .redisconn import connect

    sched = export(connect(a.redis), a.experiment, a.out, a.member)
    out, fin = Path(a.out), sched["final"]
    print(f"{out / 'checkpoint.pt'}: {fin['member']} at step {fin['step']}, {sched['metric']}={fin['score']:.6g},"
          f" {fin['size']} bytes, sha256 {fin['sha256'][:16]}… verified")
    n = len(sched["phases"])
    print(f"{out / 'schedule.json'}: {len(sched['segments'])} segments, {n} phase{'s' * (n != 1)} of hyperparameters,"
          f" members {', '.join(_members(sched['segments']))}")
    print(f"{out / 'experiment.toml'}: the experiment file")
    if not sched["complete"]:
        print("warning: the lineage does not reach back to a fresh start; the schedule cannot be replayed", file=sys.stderr)
    print(f"replay it: pbt replay {out / 'schedule.json'}")
    return 0


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("schedule", help="schedule.json from `pbt export` (or the export directory)")
    p.add_argument("--device", default=os.environ.get("PBT_DEVICE", "cpu"), help="torch device (env PBT_DEVICE)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    p.add_argument("--save", default=None, metavar="PATH", help="write the replayed state as a checkpoint file")
    p.add_argument("--compare", default=None, metavar="CKPT",
                   help="compare the final state bit for bit with this checkpoint (default: checkpoint.pt beside the schedule)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the final score (and state) match exactly")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_replay)


def cmd_replay(a: argparse.Namespace) -> int:
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    sched = load_schedule(a.schedule)
    metric = sched["metric"]

    def show(row: dict[str, Any]) -> None:
        mark = "=" if row["replayed"] == row["recorded"] else "≠"
        print(f"  steps {row['from_step']:>6}-{row['to_step']:<6} {row['member']:<6} recorded {metric}="
              f"{row['recorded']:<12.8g} replayed {row['replayed']:<12.8g} {mark}")

    res = replay(sched, a.device, None if a.json else show)
    same = _compare_state(a, sched, res.state)
    if a.save:
        torch.save({"state": res.state, "step": sched["segments"][-1]["to_step"],
                    "hparams": sched["segments"][-1]["hparams"], "member": "replay"}, a.save)
    if a.json:
        print(json.dumps({"final_score": res.final_score, "recorded_score": res.recorded_score,
                          "exact": res.exact, "same_state": same, "segments": res.segments}, indent=2))
    else:
        verdict = "identical" if res.exact else f"differs by {res.final_score - res.recorded_score:+.3g}"
        print(f"replayed {metric}={res.final_score:.8g} at step {sched['segments'][-1]['to_step']};"
              f" recorded {res.recorded_score:.8g}: {verdict}")
        if same is not None:
            print(f"final state {'bit-for-bit identical to' if same else 'differs from'} the exported checkpoint")
    ok = res.exact and same is not False
    return 0 if ok or not a.check else 1


def _compare_state(a: argparse.Namespace, sched: dict[str, Any], state: Any) -> bool | None:
    path = a.compare
    sha = None
    if path is None:
        beside = (Path(a.schedule) if Path(a.schedule).is_dir() else Path(a.schedule).parent) / "checkpoint.pt"
        if not beside.exists():
            return None
        path, sha = beside, sched["final"].get("sha256")
    return same_state(load_exported(path, sha)["state"], state)
