"""Crossover explore (pbt_mq/rules/crossover.py): the blend, the second parent, the spaces, replay."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from pbt_mq.config.parse import load_file
from pbt_mq.core.model import Action, Lineage
from pbt_mq.core.space import CategoricalSpace, FloatSpace, IntSpace, PerturbSpec
from pbt_mq.rules import crossover
from pbt_mq.rules.base import ExploreContext, ExploreSpec, decision_rng
from pbt_mq.rules.crossover import Crossover, blend, candidates
from pbt_mq.rules.explore import Perturb
from pbt_mq.rules.registry import exploit_rule, explore_rule
from pbt_mq.state.lineage import replay_decisions

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "workers" / "digits.toml"
SPACES = {"lr": FloatSpace(1e-4, 1.0, log=True), "mom": FloatSpace(0.0, 0.99), "layers": IntSpace(1, 8),
          "batch": CategoricalSpace((16, 32, 64), ordered=True), "opt": CategoricalSpace(("adam", "sgd", "rms"))}
DONOR = {"lr": 0.01, "mom": 0.9, "layers": 2, "batch": 32, "opt": "adam"}
KEEP = ExploreSpec("crossover", resample_probability=0.0, perturb=PerturbSpec(factors=(1.0,)))  # perturb keeps floats, ints


def rec(i: int, member: str, score: float, hp: dict[str, Any], step: int = 0, **kw: Any) -> Lineage:
    """A lineage record as state.lineage.records returns it; ids in stream order."""
    fields = dict(member=member, seq=i, step=step or 10 * (i + 1), score=score, action=Action.CONTINUE,
                  ckpt_key=f"{member}/{i}", hparams=hp, next_hparams=hp, id=f"{1700000000000 + i}-0")
    return Lineage(**{**fields, **kw})


def population(n: int = 8, seed: int = 0) -> list[Lineage]:
    """Two rounds of ``n`` members m0..m{n-1} with random values; the score grows with the index."""
    r = random.Random(seed)
    out = []
    for i in range(2 * n):
        hp = {name: space.sample(r) for name, space in SPACES.items()}
        out.append(rec(i, f"m{i % n}", 0.1 * i, hp))
    return out


def ctx(history=(), member: str = "m0", spaces=SPACES, mode: str = "max", population_size: int = 8) -> ExploreContext:
    return ExploreContext(spaces, population_size, member, 50, (lambda x: x) if mode == "max" else (lambda x: -x),
                          list(history))


# ---------------------------------------------------------------- the blend


@pytest.mark.parametrize("space", [FloatSpace(-3.0, 5.0), FloatSpace(1e-6, 10.0, log=True), FloatSpace(0.0, 1.0)])
def test_a_blended_float_lies_between_the_parents(space):
    draws = []
    for seed in range(300):
        r = random.Random(seed)
        a, b = space.sample(r), space.sample(r)
        x = blend(space, a, b, r)
        assert min(a, b) <= x <= max(a, b) and space.contains(x) and type(x) is float
        u = math.log if space.log else float  # the position in the space's own scale
        draws.append((u(x) - u(min(a, b))) / (u(max(a, b)) - u(min(a, b))) if a != b else 0.5)
    assert 0.3 < sum(draws) / len(draws) < 0.7  # spread over the interval, not stuck at one parent
    assert len({round(d, 6) for d in draws}) > 200


def test_a_log_blend_is_uniform_in_log_units():
    space = FloatSpace(1e-6, 1.0, log=True)
    xs = [blend(space, 1e-5, 1e-1, random.Random(s)) for s in range(2000)]
    below = sum(x < 1e-3 for x in xs) / len(xs)  # 1e-3: the log midpoint (a linear blend puts ~1% below it)
    assert 0.45 < below < 0.55


@pytest.mark.parametrize("space,a,b", [(CategoricalSpace(("adam", "sgd", "rms")), "adam", "sgd"),
                                       (CategoricalSpace((16, 32, 64), ordered=True), 16, 64), (IntSpace(1, 100), 3, 90)])
def test_ints_and_categoricals_come_from_one_parent_half_the_time_each(space, a, b):
    picks = [blend(space, a, b, random.Random(s)) for s in range(1000)]
    assert set(picks) == {a, b}
    assert 400 < picks.count(a) < 600


def test_a_donor_value_outside_the_space_gives_the_other_parents():
    assert blend(FloatSpace(0.0, 1.0), 7.0, 0.25, random.Random(0)) == 0.25
    assert blend(CategoricalSpace(("a", "b")), None, "b", random.Random(0)) == "b"


# ---------------------------------------------------------------- the rule


def test_values_always_stay_inside_their_spaces():
    spaces = {**SPACES, "noisy": FloatSpace(-1.0, 1.0, perturb_mode="noise"), "tiny": IntSpace(0, 1)}
    rule = Crossover(ExploreSpec("crossover", perturb=PerturbSpec(factors=(0.5, 3.0), noise_std=2.0)))
    for seed in range(300):
        r = random.Random(seed)
        recs = [dataclasses.replace(x, hparams={**x.hparams, "noisy": r.uniform(-1, 1), "tiny": r.randint(0, 1)})
                for x in population(seed=seed)]
        donor = {name: space.sample(r) for name, space in spaces.items()}
        new, ops = rule.explore(donor, ctx(recs, spaces=spaces), r)
        assert set(new) == set(spaces) and all(spaces[k].contains(v) for k, v in new.items()), (seed, new)
        assert "with m" in ops[0] and len(ops) == 1 + len(spaces)


def test_without_perturbation_the_child_lies_between_its_parents_and_the_ops_say_so():
    recs = population()
    for seed in range(100):
        new, ops = Crossover(KEEP).explore(DONOR, ctx(recs), random.Random(seed))
        mate = re.fullmatch(r"crossover: upto=1700000000015-0 count=16 n=7 top=2 with (m\d)@step (\d+)", ops[0])
        assert mate, ops[0]
        other = next(x for x in recs if x.member == mate[1] and x.step == int(mate[2])).hparams
        for name in ("lr", "mom"):
            assert min(DONOR[name], other[name]) <= new[name] <= max(DONOR[name], other[name])
        assert new["layers"] in (DONOR["layers"], other["layers"])
        assert re.fullmatch(r"opt: 'adam' x '\w+' --\(cross '(adam|sgd|rms)', resample\)--> '\w+'", ops[5]), ops[5]
        cross = re.search(r"--\(cross '(\w+)',", ops[5])[1]
        assert cross in ("adam", other["opt"])  # a categorical comes from a parent (then perturb resamples it)
    assert re.fullmatch(r"lr: 0\.01 x \S+ --\(cross \S+, x1\)--> \S+", ops[3]), ops  # sorted: batch, layers, lr, ...


def test_the_second_parent_is_drawn_from_the_top_quarter_of_other_members_newest_records():
    recs = population()  # newest: m7 (1.5) > m6 (1.4) > ... > m0 (0.8)
    odd = rec(20, "m9", 9.0, {"lr": 0.1})  # another shape: not a candidate
    diverged = rec(21, "m8", math.nan, dict(DONOR, lr=0.5))
    twin = rec(22, "m5", 99.0, dict(DONOR))  # the donor's own values: crossing with it is plain perturb
    ranked = candidates(DONOR, ctx([*recs, odd, diverged, twin], member="m6"), [*recs, odd, diverged, twin])
    assert [x.member for x in ranked] == ["m7", "m4", "m3", "m2", "m1", "m0"]  # not m6 (itself), m5, m8, m9
    assert all(x.seq >= 8 for x in ranked)  # each member's newest record
    mates = {Crossover(KEEP).explore(DONOR, ctx(recs, member="m6"), random.Random(s))[1][0].split(" with ")[1]
             for s in range(100)}
    assert mates == {"m7@step 160", "m5@step 140"}  # ceil(0.25 * 7) = 2 of the 7 others
    low = {Crossover(KEEP).explore(DONOR, ctx(recs, mode="min"), random.Random(s))[1][0].split(" with ")[1]
           for s in range(100)}
    assert low == {"m1@step 100", "m2@step 110"}  # mode = "min": the lowest scores are the good ones


def test_the_same_rng_seed_gives_the_same_child():
    rule = Crossover(ExploreSpec("crossover"))
    runs = [rule.explore(DONOR, ctx(population()), random.Random(11)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] != rule.explore(DONOR, ctx(population()), random.Random(12))


def test_with_no_second_parent_it_perturbs_and_says_so():
    spec = ExploreSpec("crossover")
    for history in ([], [rec(0, "m0", 1.0, DONOR)], [rec(0, "m3", math.inf, dict(DONOR, lr=0.5))]):
        new, ops = Crossover(spec).explore(DONOR, ctx(history), random.Random(4))
        assert ops[0].startswith("crossover: upto=") and ops[0].endswith(" n=0 (no second parent: perturb)")
        assert (new, ops[1:]) == Perturb(spec).explore(DONOR, ctx(), random.Random(4))
    assert ops[0] == "crossover: upto=1700000000000-0 count=1 n=0 (no second parent: perturb)"
    assert Crossover(spec).replay_history([rec(0, "m0", 1.0, DONOR)], ["crossover: upto=0-0 count=0 n=0"]) == []


def test_replay_history_finds_exactly_the_records_used_and_gives_the_same_child():
    rule = Crossover(ExploreSpec("crossover"))
    recs = population(seed=3)
    later = [rec(16 + i, f"m{i}", 50.0, dict(DONOR, lr=0.9)) for i in range(4)]  # written after the decision
    window = recs[4:][::-1]  # what the arbiter read: the newest 12 (any order)
    new, ops = rule.explore(DONOR, ctx(window, member="m2"), random.Random(5))
    assert ops[0].startswith("crossover: upto=1700000000015-0 count=12 ")
    seen = rule.replay_history([*recs, *later], ops)
    assert list(seen) == recs[4:]
    assert rule.explore(DONOR, ctx(seen, member="m2"), random.Random(5)) == (new, ops)
    assert rule.replay_history(recs, ["lr: 0.1 --(x0.8)--> 0.08"]) == ()  # not a crossover decision


def test_the_history_is_a_few_rounds_of_the_population_and_the_rule_is_registered():
    assert [crossover.window(n) for n in (1, 8, 100, 1000)] == [4, 32, 400, 512]
    cfg = load_file(DIGITS, ["explore.rule=crossover"])
    rule = explore_rule(cfg.explore)
    assert isinstance(rule, Crossover) and rule.history_size(cfg.population) == 32
    assert load_file(ROOT / "workers" / "pareto.toml", ["explore.rule=crossover"]).explore.rule == "crossover"


def test_replay_decisions_re_derives_a_logged_crossover_and_catches_a_forged_one():
    cfg = load_file(DIGITS, ["explore.rule=crossover", "seed=7"])
    r = random.Random(1)
    recs = []
    for i in range(16):  # two rounds of eight members, m7 the best
        hp = {name: space.sample(r) for name, space in cfg.spaces.items()}
        recs.append(rec(i, f"m{i % 8}", 0.5 + 0.03 * i, hp, step=25 * (i // 8 + 1)))
    member, seq = "m0", 2
    mine = next(x for x in reversed(recs) if x.member == member)
    board = sorted([(x.member, x.score) for x in recs[9:]] + [(member, 0.4)], key=lambda e: -e[1])  # m0 fell to 0.4
    rng = decision_rng(cfg.seed, member, seq)  # as the arbiter does: one rng for the donor, then the explore
    donor = exploit_rule(cfg.exploit).choose(board, member, 0.4, rng)
    assert donor is not None
    source = next(x for x in reversed(recs) if x.member == donor)
    rule = explore_rule(cfg.explore)
    hp, ops = rule.explore(source.hparams, ExploreContext(cfg.spaces, cfg.population, member, source.step,
                                                          cfg.higher_is_better, recs), rng)
    assert " with m" in ops[0]
    exploit = rec(16, member, 0.4, mine.hparams, step=75, seq=seq, action=Action.EXPLOIT, parent=donor,
                  parent_step=source.step, next_start_key=source.ckpt_key, next_hparams=hp, ops=ops,
                  snapshot=[list(e) for e in board], start_step=50)
    log = [*recs, exploit, rec(17, "m3", 0.99, dict(DONOR, lr=0.4), step=75)]
    assert replay_decisions(cfg, log) == []
    forged = dict(hp, momentum=0.123)
    assert len(replay_decisions(cfg, [*recs, dataclasses.replace(exploit, next_hparams=forged)])) == 1
