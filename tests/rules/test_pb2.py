"""PB2 (pbt_mq/pb2.py): the data adapter, the GP-UCB proposal, replay, and the optional dependency."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pbt_mq.config.parse import ConfigError, load_file
from pbt_mq.core.model import Lineage
from pbt_mq.core.space import CategoricalSpace, FloatSpace, IntSpace
from pbt_mq.rules import pb2
from pbt_mq.rules.base import ExploreContext
from pbt_mq.rules.registry import explore_rule

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "workers" / "digits.toml"
LR = {"lr": FloatSpace(1e-3, 1.0, log=True)}


def rec(i: int, member: str, start: int, step: int, score: float, lr: float, start_key: str = "",
        action: str = "continue", next_lr: float | None = None) -> Lineage:
    """A lineage record as state.lineage.records returns it."""
    return Lineage.from_entry(f"{1000 + i}-0", {"member": member, "seq": str(i), "start_step": str(start), "step": str(step),
            "score": repr(score), "action": action, "start_key": start_key, "ckpt_key": f"{member}/{i}",
            "hparams": json.dumps({"lr": lr}), "next_hparams": json.dumps({"lr": next_lr if next_lr else lr}),
            "parent": "", "parent_step": str(start) if action == "exploit" else "", "ops": "[]"})


def test_encode_puts_every_kind_of_space_in_the_unit_box():
    spaces = {"a": FloatSpace(1e-3, 1.0, log=True), "b": IntSpace(0, 10), "c": CategoricalSpace((16, 32, 64), ordered=True),
              "d": CategoricalSpace(("adam", "sgd"))}
    x = pb2.encode({"a": 0.0316227766, "b": 5, "c": 64, "d": "sgd"}, spaces)
    assert x == pytest.approx([0.5, 0.5, 1.0, 0.0, math.sqrt(0.5)])
    one, other = (np.array(pb2.encode({"a": 1e-3, "b": 0, "c": 16, "d": v}, spaces)) for v in ("adam", "sgd"))
    assert np.linalg.norm(one - other) == pytest.approx(1.0)  # two categories are one unit apart


def test_segment_data_measures_improvement_from_the_checkpoint_each_segment_started_from():
    recs = [
        rec(0, "m0", 0, 10, 0.50, 0.1),
        rec(1, "m1", 0, 10, 0.80, 0.01),
        rec(2, "m0", 10, 20, 0.40, 0.1, start_key="m0/0"),  # loss fell 0.1 over 10 steps
        rec(3, "m1", 10, 20, math.inf, 0.9, start_key="m1/1"),  # diverged: counts as the worst
        rec(4, "m2", 10, 20, 0.30, 0.05, start_key="m1/1", action="exploit", next_lr=0.02),
    ]
    observed, pending = pb2.segment_data(recs, lambda s: -s, exclude="m0")  # mode = "min"
    assert [(p.t, p.hparams["lr"]) for p in observed] == [(10.0, 0.1), (10.0, 0.05), (10.0, 0.9)]
    assert [p.y for p in observed] == pytest.approx([0.01, 0.05, 0.01])
    assert [(p.t, p.hparams["lr"]) for p in pending] == [(20.0, 0.9), (10.0, 0.02)]  # not m0, the one deciding


def synthetic(best_early: float, best_late: float, rng: random.Random) -> list[pb2.Point]:
    """Improvement peaks at lr=best_early for t < 100 and at lr=best_late after."""
    pts = []
    for t in range(0, 200, 10):
        best = best_early if t < 100 else best_late
        for _ in range(4):
            lr = math.exp(rng.uniform(math.log(1e-3), 0.0))
            pts.append(pb2.Point(float(t), {"lr": lr}, -abs(math.log10(lr / best)) + rng.gauss(0, 0.05)))
    return pts


def test_the_proposal_follows_what_helps_now_not_what_helped_early():
    data = synthetic(best_early=0.3, best_late=0.003, rng=random.Random(1))
    hp, info = pb2.propose({"lr": 0.3}, LR, data, [], t_now=200.0, rng=random.Random(2))
    assert abs(math.log10(hp["lr"] / 0.003)) < 0.5, (hp, info)
    assert info["eps"] > 0.01  # the fitted kernel forgets old segments


def test_the_proposal_is_reproducible_and_stays_in_every_space():
    spaces = {"lr": FloatSpace(1e-3, 1.0, log=True), "layers": IntSpace(1, 8),
              "batch": CategoricalSpace((16, 32, 64), ordered=True), "opt": CategoricalSpace(("adam", "sgd"))}
    r = random.Random(3)
    data = [pb2.Point(float(t), {"lr": math.exp(r.uniform(-6.9, 0)), "layers": r.randint(1, 8),
                                 "batch": r.choice((16, 32, 64)), "opt": r.choice(("adam", "sgd"))}, r.random())
            for t in range(0, 100, 5)]
    base = {"lr": 0.01, "layers": 2, "batch": 32, "opt": "adam"}
    picks = [pb2.propose(base, spaces, data, data[-3:], 100.0, random.Random(7))[0] for _ in range(2)]
    assert picks[0] == picks[1]
    assert all(spaces[k].contains(v) for k, v in picks[0].items())
    assert isinstance(picks[0]["layers"], int) and picks[0]["opt"] in ("adam", "sgd")


def test_pending_points_shrink_the_bonus_where_members_already_are():
    gp = pb2.GP(0.2, 0.1, 0.05)
    x = np.array([[0.0, 0.1], [0.0, 0.9]])
    q = np.array([[1.0, 0.5]])
    alone, with_pending = gp.std(x, q)[0], gp.std(np.vstack([x, q]), q)[0]
    assert with_pending < 0.5 * alone


def context(cfg, history, member="m1", step=75) -> ExploreContext:
    return ExploreContext(cfg.spaces, cfg.population, member, step, cfg.higher_is_better, history)


def test_explore_pb2_names_the_records_it_used_and_replays_from_them():
    cfg = load_file(DIGITS, ["explore.rule=pb2"])
    rule = explore_rule(cfg.explore)
    hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32}
    recs = []
    for i in range(12):
        h = dict(hp, lr=0.01 * (i + 1))
        recs.append(dataclasses.replace(rec(i, f"m{i % 4}", 25 * (i // 4), 25 * (i // 4 + 1), 0.5 + 0.01 * i, 0.0,
                                            start_key=f"m{i % 4}/{i - 4}" if i >= 4 else ""), hparams=h, next_hparams=h))
    window = recs[:10][::-1]  # what XREVRANGE gave the arbiter, newest first
    new, ops = rule.explore(hp, context(cfg, window), random.Random(5))
    assert ops[0].startswith(f"pb2: upto=1009-0 count={pb2.window(cfg.population)} n=6")
    assert list(rule.replay_history(recs, ops)) == recs[:10]  # the later records are left out
    again, _ = rule.explore(hp, context(cfg, rule.replay_history(recs, ops)), random.Random(5))
    assert again == new
    odd = Lineage.from_entry("1000-1", {**rec(0, "m9", 0, 25, 0.9, 0.1).encode(), "hparams": json.dumps({"lr": 0.1})})
    assert rule.explore(hp, context(cfg, [*window, odd]), random.Random(5))[0] == new  # another shape: skipped
    assert all(cfg.spaces[k].contains(v) for k, v in new.items())


def test_too_little_data_falls_back_to_perturbation_and_says_so():
    cfg = load_file(DIGITS, ["explore.rule=pb2"])
    hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 32}
    new, ops = explore_rule(cfg.explore).explore(hp, context(cfg, [], "m0", 0), random.Random(0))
    assert ops[0] == f"pb2: upto=0-0 count={pb2.window(8)} n=0 (too few points: perturb)"
    assert len(ops) == 5 and new != hp


def test_pb2_is_an_explore_rule_and_the_core_imports_without_numpy():
    assert load_file(DIGITS, ["explore.rule=pb2"]).explore.rule == "pb2"
    code = (
        "import sys\n"
        "sys.modules['numpy'] = None  # as if not installed: import fails, find_spec says None\n"
        "import pbt_mq.control.arbiter, pbt_mq.state.lineage, pbt_mq.cli\n"
        "from pbt_mq.config.parse import load_file, ConfigError\n"
        f"load_file({str(DIGITS)!r})\n"
        "try:\n"
        f"    load_file({str(DIGITS)!r}, ['explore.rule=pb2'])\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "explore.rule: 'pb2' needs numpy: pip install 'pbt-mq[pb2]'"


def test_unknown_explore_rule_still_names_pb2():
    with pytest.raises(ConfigError, match="perturb, resample, pb2, none"):
        load_file(DIGITS, ["explore.rule=bayes"])
