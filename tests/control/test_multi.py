"""Multi-objective PBT: non-dominated rank then crowding distance as the order the rules act on; the front,
the hypervolume; decisions replay from the board the lineage keeps.

The arbiter runs in-process on a real Redis with ready events published by hand (test_fleet_rules.py runs
workers/pareto.toml on real processes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pytest
from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.config.reader import ConfigError
from pbt_mq.control.arbiter import Arbiter
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action
from pbt_mq.rules.pareto import crowding, dominates, fronts, hypervolume, oriented, pareto_scores
from pbt_mq.state.experiment import launch, load_config, status
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.bench.control import fake_event, publish, take_commands

MO = ['metric=["q","h0"]', 'mode=["max","min"]']


def test_fronts_are_non_dominated_layers_and_crowding_keeps_the_ends():
    rng = random.Random("fronts")
    for _ in range(50):
        pts = {f"m{i}": (rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 2, 3])) for i in range(rng.randint(1, 9))}
        layers = fronts(pts)
        assert sorted(m for f in layers for m in f) == sorted(pts)
        for i, f in enumerate(layers):
            assert not any(dominates(pts[a], pts[b]) for a, b in itertools.permutations(f, 2))  # within: none
            for b in f:  # each member of a later front is dominated by one of the front before it
                assert i == 0 or any(dominates(pts[a], pts[b]) for a in layers[i - 1])
        scores = pareto_scores(pts)
        for i, j in itertools.combinations(range(len(layers)), 2):
            assert min(scores[m] for m in layers[i]) > max(scores[m] for m in layers[j])  # a better front always ranks higher
    pts = {"a": (0.0, 3.0), "b": (1.0, 2.0), "c": (1.5, 1.9), "d": (3.0, 0.0)}
    c = crowding(["a", "b", "c", "d"], pts)
    assert math.isinf(c["a"]) and math.isinf(c["d"])  # the ends of the front are always kept
    assert c["b"] == pytest.approx((1.5 + 1.1) / 3) and c["c"] == pytest.approx((2 + 2) / 3)  # normalised neighbour gaps
    s = pareto_scores(pts)
    assert s["a"] == s["d"] == 0.5 > s["c"] > s["b"]  # the more crowded one ranks lower


def test_hypervolume_matches_counting_on_a_grid():
    rng = random.Random("hv")
    for dim in (2, 3):
        pts = [tuple(rng.randint(1, 6) for _ in range(dim)) for _ in range(7)]
        ref = (0,) * dim
        cells = sum(1 for cell in itertools.product(range(6), repeat=dim)
                    if any(all(p[i] > cell[i] for i in range(dim)) for p in pts))
        assert hypervolume(pts, ref) == cells
    assert hypervolume([(1.0, 1.0)], (1.0, 0.0)) == 0.0  # not better than the reference everywhere: nothing


def test_several_metrics_are_validated():
    cfg = load_file(TOY, MO)
    assert cfg.multi and cfg.metric == "q" and cfg.metrics == ("q", "h0") and cfg.modes == ("max", "min")
    assert cfg.objectives({"q": 1.0, "h0": 0.25}) == (1.0, -0.25) and cfg.objectives({"q": 1.0}) is None
    for sets, message in (
        ([*MO, "stop.score=1.0"], "stop.score: a target score needs one metric"),
        ([*MO, "explore.rule=pb2"], "explore.rule: pb2 models one metric"),
        (['metric=["q","h0"]', 'mode=["max"]'], "mode: one per metric (2), got 1"),
        (['metric=["q","q"]'], "metric: a list must hold 2 to 8 distinct metric names"),
    ):
        with pytest.raises(ConfigError, match=re_escape(message)):
            load_file(TOY, sets)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def event(cmd, q: float, h0: float):
    return dataclasses.replace(fake_event(cmd, q), metrics={"q": q, "h0": h0, "h1": 0.0})


def test_members_are_ranked_by_pareto_order_and_the_decisions_replay(r):
    cfg = load_file(TOY, [*MO, "population.size=6", "population.initial=[]", "stop.steps=24", "ready.steps=4",
                          "gc.enabled=false", "exploit.quantile=0.34", "exploit.compare=latest"])
    exp = launch(r, cfg, "file:///tmp/unused")
    arb = Arbiter(r, "t1", block_ms=10, reap_interval_s=0)
    values = {"m000": (0.9, 0.9), "m001": (0.5, 0.5), "m002": (0.1, 0.1),  # the front: a trade-off
              "m003": (0.4, 0.8), "m004": (0.2, 0.6), "m005": (0.05, 0.95)}  # dominated
    for _ in range(6):
        for cmd in take_commands(r):
            q, h0 = values[cmd.member]
            publish(r, event(cmd, q + cmd.seq * 1e-3, h0))
        arb.run(burst=True)
    recs = [rec for rec in records(r, exp) if rec.action in (Action.CONTINUE, Action.EXPLOIT)]
    assert recs and all(rec.objectives is not None and len(rec.objectives) == 2 for rec in recs)
    first = [rec for rec in recs if rec.seq == 0][-1]  # the last report of the first ready point saw everyone
    points = {m: oriented(values[m], cfg.modes) for m in values}
    want = sorted(pareto_scores(points).items(), key=lambda e: (-e[1], [-ord(c) for c in e[0]]))
    assert [m for m, _ in first.leaderboard] == [m for m, _ in want]
    exploits = [rec for rec in records(r, exp) if rec.action is Action.EXPLOIT]
    assert exploits and all(rec.member in ("m003", "m004", "m005") for rec in exploits)  # only the dominated copy
    assert all(rec.parent in ("m000", "m001", "m002") for rec in exploits)
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []
    front = status(r, exp)["front"]
    assert status(r, exp)["best"] is None
    assert {row["member"] for row in front} <= {"m000", "m001", "m002", "m003", "m004", "m005"}
    vals = {row["member"]: oriented(list(row["values"].values()), cfg.modes) for row in front}
    assert not any(dominates(vals[a], vals[b]) for a, b in itertools.permutations(vals, 2))
    latest = {m.decode(): json.loads(v) for m, v in r.hgetall(Keys.vectors(Keys(exp).scores)).items()}
    others = {m: oriented(v, cfg.modes) for m, v in latest.items() if m not in vals}
    assert all(any(dominates(f, o) for f in vals.values()) for o in others.values())  # the rest is dominated
