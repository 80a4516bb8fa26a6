"""exploit.rule = "ttest", exploit.window and exploit.subpopulations: their semantics, rule by rule."""

from __future__ import annotations

import math
import random

import pytest
import tomllib
from scipy import stats

from pbt_mq.config.parse import parse
from pbt_mq.config.reader import ConfigError
from pbt_mq.rules import window
from pbt_mq.rules.base import ExploitSpec
from pbt_mq.rules.registry import exploit_rule
from pbt_mq.rules.ttest import better, welch_p

TTEST = ExploitSpec("ttest", window=4, level=0.05)


def test_welch_p_matches_scipy_on_random_samples():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.gauss(rng.random(), rng.random() + 0.01) for _ in range(rng.randint(2, 10))]
        b = [rng.gauss(0.0, rng.random() + 0.01) for _ in range(rng.randint(2, 10))]
        assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, abs=1e-9)


def test_better_needs_a_higher_mean_and_significance():
    clear_lead = [1.0, 1.1, 0.9, 1.05], [0.0, 0.1, -0.1, 0.05]
    assert better(*clear_lead, 0.05) and not better(clear_lead[1], clear_lead[0], 0.05)
    noisy = [0.6, -0.2, 1.1, 0.1], [0.1, 0.5, -0.3, 0.4]  # a higher mean, well within the noise
    assert sum(noisy[0]) > sum(noisy[1]) and not better(*noisy, 0.05)
    assert better(*noisy, 0.9)  # a loose level copies it
    assert better([1.0, 1.0], [0.0, 0.0], 0.05)  # neither varies: the means decide
    assert not better([1.0, 1.0], [1.0, 1.0], 0.05)
    assert better([0.5], [], 0.05) and not better([], [0.5], 0.05)  # no usable score of its own: any other wins
    assert not better([math.nan, math.inf], [0.0], 0.05)


def test_ttest_compares_with_the_drawn_other_member_only():
    board = [("m3", 4.0), ("m2", 3.0), ("m1", 2.0), ("m0", 1.0)]
    windows = {"m0": [1.0, 1.1, 0.9], "m1": [2.0, 2.1, 1.9], "m2": [0.5, 5.0, 3.5], "m3": [4.0, 4.1, 3.9]}
    rule = exploit_rule(TTEST)

    class U(random.Random):
        def __init__(self, u: float) -> None:
            super().__init__(0)
            self.u = u

        def random(self) -> float:
            return self.u

    # m0's others, best first: m3, m2, m1; u picks int(u * 3)
    assert rule.choose_windowed(board, "m0", U(0.1), windows.__getitem__) == "m3"
    assert rule.choose_windowed(board, "m0", U(0.5), windows.__getitem__) is None  # m2's window is all noise
    assert rule.choose_windowed(board, "m0", U(0.9), windows.__getitem__) == "m1"
    assert rule.choose_windowed(board, "m3", U(0.9), windows.__getitem__) is None  # m0 is worse


def test_ttest_is_reproducible_from_its_seed():
    board = [(f"m{i}", float(i)) for i in range(8)]
    windows = {m: [s + random.Random(m).gauss(0, 0.5) for _ in range(4)] for m, s in board}
    rule = exploit_rule(TTEST)
    picks = [rule.choose_windowed(board, "m1", random.Random(seed), windows.__getitem__) for seed in range(50)]
    again = [rule.choose_windowed(board, "m1", random.Random(seed), windows.__getitem__) for seed in range(50)]
    assert picks == again and len(set(picks)) > 2


def test_a_window_keeps_the_last_k_scores_and_their_mean():
    kept, mean = window.extend([1.0, 2.0, 3.0], 4.0, 3)
    assert kept == [2.0, 3.0, 4.0] and mean == 3.0
    assert window.extend([], 0.25, 4) == ([0.25], 0.25)
    assert window.parse(b"1 x nan 2.5 inf -3") == [1.0, 2.5, -3.0]  # hand-written junk is skipped
    assert window.parse(window.encode([0.1, 1 / 3])) == [0.1, 1 / 3]  # exact round trip


def test_subpopulations_exploit_at_their_period_and_copy_only_slower_members():
    spec = ExploitSpec(subpopulations=(1, 4, 0))
    assert [spec.period(f"m{i:03d}") for i in range(6)] == [1, 4, 0, 1, 4, 0]
    assert all(spec.due("m000", i) for i in range(1, 9))
    assert [i for i in range(1, 13) if spec.due("m001", i)] == [4, 8, 12]
    assert not any(spec.due("m002", i) for i in range(1, 13))
    assert spec.may_copy("m000", "m001") and spec.may_copy("m000", "m002") and spec.may_copy("m001", "m002")
    assert not spec.may_copy("m001", "m000") and not spec.may_copy("m002", "m001")
    assert ExploitSpec().due("m005", 3) and ExploitSpec().may_copy("m005", "m001")


def load_text(text: str):
    return parse(tomllib.loads(text))


BASE = """
name = "t"
trainable = "workers.toy:Toy"
metric = "q"
[population]
size = 4
[ready]
steps = 4
[stop]
steps = 20
[hparams.h0]
type = "float"
low = 0.0
high = 1.0
"""


@pytest.mark.parametrize("exploit, message", [
    ("rule = 'ttest'", "exploit.window: the ttest rule compares the last k scores of two members; set window = k >= 2"),
    ("window = 0", "exploit.window: must be >= 1, got 0"),
    ("window = 65", "exploit.window: must be <= 64, got 65"),
    ("subpopulations = [4]", "exploit.subpopulations: a list of 2 to 16 exploit periods"),
    ("subpopulations = [0, 0]", "exploit.subpopulations: a list of 2 to 16 exploit periods"),
    ("subpopulations = [1, -1]", "exploit.subpopulations: a list of 2 to 16 exploit periods"),
    ("subpopulations = '1,4'", "exploit.subpopulations: a list of 2 to 16 exploit periods"),
    ("level = 0.9", "exploit.level: must be <= 0.5, got 0.9"),
])
def test_bad_settings_say_what_to_do(exploit, message):
    with pytest.raises(ConfigError) as err:
        load_text(BASE + "[exploit]\n" + exploit + "\n")
    assert message in str(err.value)


def test_ttest_and_subpopulations_are_bounded_by_the_board_python_reads():
    big = BASE.replace("size = 4", "size = 300")
    for exploit in ("rule = 'ttest'\nwindow = 3", "subpopulations = [1, 0]"):
        with pytest.raises(ConfigError, match="rank in Python on a board of at most 256 members"):
            load_text(big + "[exploit]\n" + exploit + "\n")
    cfg = load_text(BASE + "[exploit]\nrule = 'ttest'\nwindow = 5\nlevel = 0.1\nsubpopulations = [1, 2, 0]\n")
    assert (cfg.exploit.rule, cfg.exploit.window, cfg.exploit.level, cfg.exploit.subpopulations) == \
        ("ttest", 5, 0.1, (1, 2, 0))
