"""The pure PBT rules: spaces (sample/perturb/clamp), explore, exploit and the decision rng."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_mq.core.space import CategoricalSpace, FloatSpace, IntSpace, PerturbSpec, sample_all
from pbt_mq.rules.base import (
    ExploitSpec,
    ExploreSpec,
    decision_rng,
    fmt,
    sort_snapshot,
    truncation_size,
)
from pbt_mq.rules.registry import exploit, explore

settings.register_profile("pbt", max_examples=300, derandomize=True, deadline=None)
settings.load_profile("pbt")

# ---------------------------------------------------------------- strategies

modes = st.sampled_from([None, "multiply", "noise"])
linear_floats = st.tuples(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6), modes).map(
    lambda t: FloatSpace(t[0], t[0] + t[1], perturb_mode=t[2])).filter(lambda s: s.low < s.high)
log_floats = st.tuples(st.floats(1e-9, 1e3), st.floats(1.0001, 1e6), modes).map(
    lambda t: FloatSpace(t[0], t[0] * t[1], log=True, perturb_mode=t[2]))
linear_ints = st.tuples(st.integers(-10_000, 10_000), st.integers(1, 10_000), modes).map(
    lambda t: IntSpace(t[0], t[0] + t[1], perturb_mode=t[2]))
log_ints = st.tuples(st.integers(1, 10_000), st.integers(1, 10_000), modes).map(
    lambda t: IntSpace(t[0], t[0] + t[1], log=True, perturb_mode=t[2]))
scalars = st.one_of(st.booleans(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.text(max_size=3))
categoricals = st.tuples(
    st.lists(scalars, min_size=1, max_size=6, unique_by=lambda v: (type(v), v)), st.booleans()
).map(lambda t: CategoricalSpace(tuple(t[0]), ordered=t[1]))
spaces = st.one_of(linear_floats, log_floats, linear_ints, log_ints, categoricals)
perturbs = st.builds(
    PerturbSpec,
    factors=st.lists(st.floats(0.01, 10.0), min_size=1, max_size=4).map(tuple),
    mode=st.sampled_from(["multiply", "noise"]),
    noise_std=st.floats(1e-6, 10.0),
)
seeds = st.integers(0, 2**32)


def value_in(space, seed: int):
    return space.sample(random.Random(seed))


def in_space(space, value) -> bool:
    """Membership checked independently of ``space.contains``."""
    if isinstance(space, CategoricalSpace):
        return any(type(value) is type(v) and value == v for v in space.values)
    if isinstance(space, IntSpace):
        return type(value) is int and space.low <= value <= space.high
    return type(value) is float and space.low <= value <= space.high


# ---------------------------------------------------------------- spaces


@given(space=spaces, seed=seeds)
def test_sample_stays_in_the_space(space, seed):
    value = value_in(space, seed)
    assert in_space(space, value) and space.contains(value)


class EdgeRng(random.Random):
    """uniform() returns its upper end, which Python documents as possible."""

    def uniform(self, a, b):
        return b


@pytest.mark.parametrize("high", [0.1, 3.0, 10.0, 0.01])  # exp(log(high)) > high for each of these
def test_log_sample_at_the_upper_end_stays_in_bounds(high: float):
    assert math.exp(math.log(high)) > high
    value = FloatSpace(high / 100, high, log=True).sample(EdgeRng(0))
    assert value == high


@given(space=spaces, seed=seeds, spec=perturbs)
def test_perturb_never_leaves_the_space(space, seed, spec):
    rng = random.Random(seed)
    value = space.sample(rng)
    new, how = space.perturb(value, rng, spec)
    assert in_space(space, new), (value, new, how)
    if isinstance(space, IntSpace):
        assert type(new) is int


@given(space=st.one_of(linear_floats, log_floats), seed=seeds, factors=st.lists(st.floats(0.01, 10), min_size=1))
def test_float_multiply_is_the_clamped_product(space, seed, factors):
    space = FloatSpace(space.low, space.high, space.log)
    rng = random.Random(seed)
    value = space.sample(rng)
    new, how = space.perturb(value, rng, PerturbSpec(tuple(factors), "multiply"))
    assert new in {min(space.high, max(space.low, value * f)) for f in factors if how == f"x{f:g}"}


@given(space=st.one_of(linear_ints, log_ints), seed=seeds, factor=st.sampled_from([0.8, 1.2, 0.5, 2.0]))
def test_int_multiply_moves_unless_at_a_bound(space, seed, factor):
    space = IntSpace(space.low, space.high, space.log)
    value = value_in(space, seed)
    new, how = space.perturb(value, random.Random(seed), PerturbSpec((factor,), "multiply"))
    assert type(new) is int and how == f"x{factor:g}"
    assert new != value or (factor > 1 and value == space.high) or (factor < 1 and value == space.low)


@pytest.mark.parametrize(("value", "factor", "new"), [(1, 1.2, 2), (1, 0.8, 0), (0, 1.2, 1), (10, 1.2, 10), (5, 2.0, 10)])
def test_small_ints_move(value, factor, new):
    assert IntSpace(0, 10).perturb(value, random.Random(0), PerturbSpec((factor,))) == (new, f"x{factor:g}")


@given(space=categoricals, seed=seeds, spec=perturbs)
def test_categorical_perturb(space, seed, spec):
    rng = random.Random(seed)
    value = space.sample(rng)
    i = next(k for k, v in enumerate(space.values) if type(v) is type(value) and v == value)
    new, how = space.perturb(value, rng, spec)
    j = next(k for k, v in enumerate(space.values) if type(v) is type(new) and v == new)
    if not space.ordered:
        assert how == "resample"
    elif len(space.values) == 1:
        assert (new, how) == (value, "stay")
    else:
        assert abs(i - j) == 1 and how == ("up" if j > i else "down")


def test_ordered_categorical_tells_one_from_one_point_oh_from_true():
    space = CategoricalSpace((1, 1.0, True), ordered=True)
    for seed in range(20):
        assert space.perturb(True, random.Random(seed), PerturbSpec()) == (1.0, "down")
        assert space.perturb(1, random.Random(seed), PerturbSpec()) == (1.0, "up")
    assert space.contains(1.0) and not space.contains(False) and not space.contains("1")
    assert space.clamp(False) == 1 and space.clamp(1.0) == 1.0


def test_ordered_categorical_at_an_end_moves_inward():
    space = CategoricalSpace((16, 32, 64, 128), ordered=True)
    for seed in range(30):
        assert space.perturb(16, random.Random(seed), PerturbSpec()) == (32, "up")
        assert space.perturb(128, random.Random(seed), PerturbSpec()) == (64, "down")
    moves = {space.perturb(32, random.Random(s), PerturbSpec())[0] for s in range(30)}
    assert moves == {16, 64}


@pytest.mark.parametrize(
    ("space", "value", "inside"),
    [
        (FloatSpace(0.0, 1.0), True, False),
        (FloatSpace(0.0, 1.0), 1, True),
        (FloatSpace(0.0, 1.0), math.nan, False),
        (FloatSpace(0.0, 1.0), "0.5", False),
        (IntSpace(0, 4), 2.0, False),
        (IntSpace(0, 4), True, False),
        (IntSpace(0, 4), 5, False),
        (CategoricalSpace(("a", 2)), 2.0, False),
    ],
)
def test_contains(space, value, inside):
    assert space.contains(value) is inside


@given(seed=seeds)
def test_sample_all_is_ordered_and_replayable(seed):
    sp = {"b": IntSpace(0, 100), "a": FloatSpace(0.0, 1.0), "c": CategoricalSpace(("x", "y", "z"))}
    first = sample_all(sp, random.Random(seed))
    assert list(first) == ["a", "b", "c"] and first == sample_all(sp, random.Random(seed))
    assert all(sp[k].contains(v) for k, v in first.items())


# ---------------------------------------------------------------- explore

OP_RE = re.compile(r"^(?P<name>\w+): (?P<old>.+) --\((?P<how>x[-+.\deinf]+|[+-][-+.\deinf]+|resample|up|down|stay)\)--> (?P<new>.+)$")
space_maps = st.dictionaries(st.from_regex(r"\A[a-z_][a-z0-9_]{0,8}\Z"), spaces, min_size=1, max_size=5)
explores = st.builds(
    ExploreSpec, rule=st.sampled_from(["perturb", "resample"]), resample_probability=st.floats(0, 1), perturb=perturbs
)


@given(sp=space_maps, spec=explores, seed=seeds)
def test_explore_stays_in_bounds_and_explains_itself(sp, spec, seed):
    hparams = sample_all(sp, random.Random(seed)) | {"fixed": "kept"}
    before = dict(hparams)
    new, ops = explore(hparams, sp, spec, random.Random(seed + 1))
    assert hparams == before  # the input is not mutated
    assert new["fixed"] == "kept" and set(new) == set(hparams)
    assert all(in_space(sp[k], new[k]) for k in sp)
    assert [op.split(":")[0] for op in ops] == sorted(sp)
    for op in ops:
        m = OP_RE.match(op)
        assert m, op
        assert (m["old"], m["new"]) == (fmt(hparams[m["name"]]), fmt(new[m["name"]]))
        if spec.rule == "resample":
            assert m["how"] == "resample"


def test_explore_op_string():
    spec = ExploreSpec("perturb", resample_probability=0.0, perturb=PerturbSpec(factors=(0.8,)))
    new, ops = explore({"lr": 0.01, "depth": 4}, {"lr": FloatSpace(1e-4, 1.0, log=True)}, spec, random.Random(0))
    assert ops == ["lr: 0.01 --(x0.8)--> 0.008"]
    assert new == {"lr": pytest.approx(0.008), "depth": 4}


def test_explore_resamples_missing_and_out_of_range_values():
    sp = {"a": FloatSpace(0.0, 1.0), "b": IntSpace(1, 3), "c": CategoricalSpace(("x", "y"))}
    spec = ExploreSpec("perturb", resample_probability=0.0)
    new, ops = explore({"a": 7.5, "c": "z"}, sp, spec, random.Random(3))
    assert all(sp[k].contains(new[k]) for k in sp)
    assert ops[0].startswith("a: 7.5 --(resample)--> ") and ops[1].startswith("b: None --(resample)--> ")
    assert ops[2].startswith("c: 'z' --(resample)--> ")


@given(sp=space_maps, seed=seeds)
def test_explore_none_does_nothing(sp, seed):
    hparams = sample_all(sp, random.Random(seed))
    rng = random.Random(seed)
    new, ops = explore(hparams, sp, ExploreSpec(rule="none"), rng)
    assert new == hparams and new is not hparams and ops == []
    assert rng.random() == random.Random(seed).random()  # not even a draw


def test_resample_probability_one_always_resamples():
    sp = {"lr": FloatSpace(1e-4, 1.0, log=True)}
    for seed in range(50):
        _, ops = explore({"lr": 0.01}, sp, ExploreSpec("perturb", 1.0), random.Random(seed))
        assert "--(resample)-->" in ops[0]


# ---------------------------------------------------------------- exploit

members = st.from_regex(r"\Am[0-9]{1,2}\Z")
scores = st.one_of(st.floats(-10, 10), st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf]))
boards = st.dictionaries(members, scores, min_size=0, max_size=12)


def reference_truncation(board: dict, member: str, own: float, q: float) -> set[str]:
    """Who may donate, from scratch: the member is in the bottom set when fewer than k members
    are strictly worse; donors are among the k best others and strictly better."""
    own = own if math.isfinite(own) else -math.inf
    others = [(m, s) for m, s in board.items() if m != member and math.isfinite(s)]
    k = min(math.ceil((len(others) + 1) * q), (len(others) + 1) // 2)
    if sum(1 for _, s in others if s < own) >= k:
        return set()
    if k == 0 or not others:
        return set()
    kth_best = sorted((s for _, s in others), reverse=True)[min(k, len(others)) - 1]
    return {m for m, s in others if s > own and s >= kth_best}  # ties at the k-th place may all donate


@given(board=boards, member=members, own=scores, q=st.sampled_from([0.2, 0.25, 0.5, 1e-9, 0.1, 0.34]), seed=seeds)
def test_truncation_donor_comes_from_the_rule(board, member, own, q, seed):
    donor = exploit(list(board.items()), member, own, ExploitSpec("truncation", q), random.Random(seed))
    allowed = reference_truncation(board, member, own, q)
    if allowed:
        assert donor in allowed
        assert math.isfinite(board[donor]) and (not math.isfinite(own) or board[donor] > own)
    else:
        assert donor is None


def test_truncation_picks_every_top_member():
    board = {f"m{i}": float(i) for i in range(10)}  # m9 best; top and bottom 2 at q=0.2
    donors = {exploit(list(board.items()), "m0", 0.0, ExploitSpec(), random.Random(s)) for s in range(60)}
    assert donors == {"m9", "m8"}
    assert exploit(list(board.items()), "m2", 2.0, ExploitSpec(), random.Random(0)) is None  # not in the bottom


@given(board=boards, member=members, own=scores, seed=seeds)
def test_tournament_donor_is_strictly_better(board, member, own, seed):
    donor = exploit(list(board.items()), member, own, ExploitSpec("tournament"), random.Random(seed))
    others = {m: s for m, s in board.items() if m != member and math.isfinite(s)}
    if donor is not None:
        assert donor in others
        assert not math.isfinite(own) or others[donor] > own
    if others and (not math.isfinite(own) or all(s > own for s in others.values())):
        assert donor is not None


@given(board=boards, member=members, own=scores, seed=seeds, rule=st.sampled_from(["truncation", "tournament"]))
def test_non_finite_members_are_never_donors(board, member, own, seed, rule):
    donor = exploit(list(board.items()), member, own, ExploitSpec(rule, 0.5), random.Random(seed))
    assert donor is None or math.isfinite(board[donor])


@given(n=st.integers(1, 30), value=st.floats(-5, 5), seed=seeds, rule=st.sampled_from(["truncation", "tournament"]),
       q=st.sampled_from([0.2, 0.5]))
def test_plateau_never_exploits(n, value, seed, rule, q):
    board = [(f"m{i}", value) for i in range(n)]
    for member, score in board:
        assert exploit(board, member, score, ExploitSpec(rule, q), random.Random(seed)) is None


@given(board=boards, member=members, own=scores, seed=seeds)
def test_exploit_none_never_exploits(board, member, own, seed):
    assert exploit(list(board.items()), member, own, ExploitSpec("none"), random.Random(seed)) is None


def test_worst_member_with_nan_score_copies_a_top_member():
    board = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0), ("e", 5.0)]
    assert exploit(board, "x", math.nan, ExploitSpec("truncation", 0.1), random.Random(0)) == "e"  # k = 1
    assert exploit(board, "x", math.nan, ExploitSpec("truncation", 0.2), random.Random(0)) in ("d", "e")  # k = 2
    assert exploit(board + [("x", math.nan)], "x", math.nan, ExploitSpec("tournament"), random.Random(0)) in "abcde"


@given(board=boards, member=members, own=scores, seed=seeds, rule=st.sampled_from(["truncation", "tournament"]),
       q=st.sampled_from([0.2, 0.5]))
def test_random_ties_only_change_decisions_that_face_a_tie(board, member, own, seed, rule, q):
    spec = ExploitSpec(rule, q, "random")
    donor = exploit(list(board.items()), member, own, spec, random.Random(seed))
    others = {m: s for m, s in board.items() if m != member and math.isfinite(s)}
    if donor is not None:
        assert donor in others and (not math.isfinite(own) or others[donor] >= own)
    if own not in others.values():  # no tie: exactly the strict rule, draw for draw
        assert donor == exploit(list(board.items()), member, own, ExploitSpec(rule, q), random.Random(seed))


@pytest.mark.parametrize("rule", ["truncation", "tournament"])
def test_random_ties_favour_neither_of_two_equal_members(rule):
    board = [("m000", 0.5), ("m001", 0.5)]
    spec = ExploitSpec(rule, 0.2, "random")
    for member in ("m000", "m001"):
        copies = sum(exploit(board, member, 0.5, spec, random.Random(s)) is not None for s in range(400))
        assert 160 < copies < 240  # about half, whichever id it has ("rank": always or never)


def test_unknown_exploit_rule_is_an_error():
    with pytest.raises(ValueError, match="unknown exploit rule 'elitist'"):
        exploit([("a", 1.0), ("b", 2.0)], "a", 1.0, ExploitSpec("elitist"), random.Random(0))


@pytest.mark.parametrize(("n", "q", "k"), [(10, 0.2, 2), (2, 0.2, 1), (3, 0.2, 1), (1, 0.5, 0), (5, 0.5, 2),
                                          (7, 0.25, 2), (100, 0.2, 20), (4, 1e-9, 1), (0, 0.2, 0)])
def test_truncation_size(n, q, k):
    assert truncation_size(n, q) == k


def test_sort_snapshot_drops_non_finite_and_orders_ties_as_redis_zrevrange():
    snap = [("a", 1.0), ("b", 1.0), ("c", math.nan), ("d", math.inf), ("e", 2), ("f", -math.inf)]
    assert sort_snapshot(snap) == [("e", 2.0), ("b", 1.0), ("a", 1.0)]


# ---------------------------------------------------------------- the decision rng


@given(seed=st.integers(0, 2**63 - 1), member=members, seq=st.integers(0, 2**31), board=boards, sp=space_maps)
def test_same_inputs_same_decisions(seed, member, seq, board, sp):
    def decide():
        rng = decision_rng(seed, member, seq)
        donor = exploit(list(board.items()), member, 0.0, ExploitSpec("tournament"), rng)
        return donor, explore(sample_all(sp, rng), sp, ExploreSpec(), rng), rng.random()

    assert repr(decide()) == repr(decide())


def test_different_seq_member_or_seed_gives_a_different_stream():
    def stream(seed, member, seq):
        rng = decision_rng(seed, member, seq)
        return [rng.random() for _ in range(4)]

    streams = [stream(s, m, q) for s in range(3) for m in ("m0", "m1", "m10") for q in range(20)]
    assert len({tuple(x) for x in streams}) == len(streams)


def test_decision_rng_is_stable_across_processes():
    code = "from pbt_mq.rules.base import decision_rng; print(decision_rng(42, 'member-7', 3).randrange(10**9))"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONHASHSEED": str(h), "PATH": ""}).stdout.strip()
        for h in (0, 1, 12345)
    }
    assert outs == {"40718222"}
    assert decision_rng(0, "m0", 0).random() == 0.0987291861438252
