"""``pbt export``: take a result away.

``export`` writes a directory a person can carry off: ``checkpoint.safetensors`` (the member's
checkpoint, verified by sha256 on the way out; ``checkpoint.pt`` for an experiment launched by an
earlier release; ``pbt_mq.load_checkpoint`` reads either), ``schedule.json`` (the checkpoint's
ancestry as a replayable schedule, read by ``observe.replay``) and ``experiment.toml``
(the experiment as it ran, overrides applied). It needs no torch: bytes are copied, not loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.config.reader import ConfigError
from pbt_mq.core.ids import member_seed
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Meta
from pbt_mq.observe.lineage import NoCheckpoint, explain, phases, target
from pbt_mq.state.experiment import load_config
from pbt_mq.state.front import pareto_front
from pbt_mq.state.lineage import records
from pbt_mq.store.base import ChecksumError
from pbt_mq.store.open import open_store

FORMAT = "pbt-mq.schedule/1"


class ScheduleError(ConfigError):
    """The schedule file cannot be replayed; the text names the field."""


# ---------------------------------------------------------------- export


def build_schedule(cfg: Experiment, exp: str, tgt: dict[str, Any], segments: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything replay needs, and what the run recorded to compare against."""
    first = segments[0]["member"] if segments else tgt["member"]
    seed = segments[0]["start"].get("seed") if segments else None  # a replacement's own, else the member's
    return {
        "format": FORMAT,
        "experiment": exp,
        "trainable": cfg.trainable,
        "trainable_args": dict(cfg.trainable_args),
        "seed": member_seed(cfg.seed, first) if seed is None else seed,
        "experiment_seed": cfg.seed,
        "first_member": first,
        "metric": cfg.metric,
        "mode": cfg.mode,
        "metrics": list(cfg.metrics),  # several: the objectives (replay compares the first, `metric`)
        # A seconds-ready run trained one step per train() call (worker.runtime's _advance).
        "train_calls": "step" if cfg.ready.seconds is not None else "segment",
        "final": tgt,
        "complete": bool(segments) and segments[0]["start"]["kind"] == "init",
        "phases": phases(segments),
        "segments": segments,
    }


def checkpoint_file(ckpt_key: str) -> str:
    """The exported checkpoint's file name: its format's extension, as the store key has it."""
    ext = ckpt_key.rsplit(".", 1)[-1] if "." in ckpt_key.rsplit("/", 1)[-1] else "pt"
    return f"checkpoint.{ext}"


def export(r: Any, exp: str, out_dir: str | Path, member: str | None = None) -> dict[str, Any]:
    """Write checkpoint.EXT, schedule.json and experiment.toml for ``member`` (default: the best)."""
    cfg = load_config(r, exp)
    if member is None and cfg.multi:
        raise NoCheckpoint(f"{exp} has several metrics ({', '.join(cfg.metrics)}): a Pareto front, not one best; "
                           "export the front with --front, or one member with --member M")
    tgt = target(r, exp, member)
    segments = explain(records(r, exp), tgt["ckpt_key"])
    sched = build_schedule(cfg, exp, tgt, segments)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store_url = Meta.read(r, Keys(exp).meta, "store").store
    copy_verified(store_url, tgt, out / checkpoint_file(tgt["ckpt_key"]))
    _write_text(out / "schedule.json", json.dumps(sched, indent=2) + "\n")
    header = f"# experiment {exp}, exported with its best checkpoint by `pbt export`\n"
    _write_text(out / "experiment.toml", header + to_toml(cfg.raw))
    return sched


def export_front(r: Any, exp: str, out_dir: str | Path) -> list[dict[str, Any]]:
    """Several metrics: every member of the Pareto front exported as ``export`` does, into DIR/MEMBER/, and
    DIR/front.json (the metrics, their modes and each front member's values and step)."""
    cfg = load_config(r, exp)
    rows = pareto_front(r, cfg, exp)
    if not rows:
        raise NoCheckpoint(f"{exp}: no member has finite values of every metric yet, so there is no front")
    out = Path(out_dir)
    for row in rows:
        export(r, exp, out / row["member"], row["member"])
    _write_text(out / "front.json", json.dumps({"experiment": exp, "metrics": list(cfg.metrics),
                                                "modes": list(cfg.modes), "front": rows}, indent=2) + "\n")
    return rows


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


