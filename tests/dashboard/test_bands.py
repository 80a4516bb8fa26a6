"""``dashboard.bands``: the quantile bands and the bounded rows a large population's page gets, and
``LineageLog.subset``, the nodes drawn as lines (tests/dashboard/test_large.py runs them in Chromium)."""

from __future__ import annotations

import random
import statistics

from pbt_mq.core.model import Action, Lineage
from pbt_mq.dashboard.bands import MAX_BUCKETS, MAX_PROBLEM_ROWS, TOP_ROWS, Bands, numeric, quantile, top_rows
from pbt_mq.dashboard.follow import LineageLog

SPACES = {"lr": {"type": "float"}, "act": {"type": "categorical", "values": ["relu", "tanh"]}}


def test_quantiles_match_the_standard_librarys_inclusive_method():
    rng = random.Random(3)
    for n in (1, 2, 5, 101):
        xs = sorted(rng.uniform(-5, 5) for _ in range(n))
        if n > 1:
            cuts = statistics.quantiles(xs, n=4, method="inclusive")
            assert [round(quantile(xs, q), 12) for q in (0.25, 0.5, 0.75)] == [round(c, 12) for c in cuts]
        assert quantile(xs, 0.0) == xs[0] and quantile(xs, 1.0) == xs[-1]


def test_bands_per_step_skip_unscored_segments_and_map_categories_to_their_index():
    b = Bands()
    for i in range(10):
        b.add({"b": 10, "y": float(i), "h": {"lr": i / 10, "act": "tanh" if i % 2 else "relu"}}, SPACES)
    b.add({"b": 10, "y": None, "h": {"lr": 99.0}}, SPACES)  # a failed segment: not in any band
    b.add({"b": 20, "y": 1.0, "h": {"lr": float("nan"), "act": "gelu", "other": 1}}, SPACES)
    s = b.summary()
    assert s["steps"] == [10, 20] and s["n"] == [10, 1]
    assert s["score"]["p50"] == [4.5, 1.0] and s["score"]["p10"][0] == quantile([float(i) for i in range(10)], 0.1)
    assert s["hparams"]["lr"]["p90"][0] == quantile(sorted(i / 10 for i in range(10)), 0.9)
    assert s["hparams"]["lr"]["p50"][1] is None  # a NaN value is left out: nothing to show at step 20
    assert s["hparams"]["act"]["p50"] == [0.5, None] and "other" not in s["hparams"]
    assert numeric({"type": "int"}, True) is None and numeric(None, 1.0) is None
    assert numeric({"type": "int"}, 10 ** 400) is None  # written by hand: no float holds it, no exception either
    b.add({"b": 30, "y": 2.0, "h": {"lr": 10 ** 400}}, SPACES)
    assert b.summary()["n"][-1] == 1


def test_many_steps_merge_into_at_most_max_buckets_keeping_every_segment():
    b = Bands()
    for step in range(1, 3 * MAX_BUCKETS + 8):
        b.add({"b": step, "y": float(step), "h": {}}, SPACES)
    s = b.summary()
    assert len(s["steps"]) == MAX_BUCKETS and sum(s["n"]) == 3 * MAX_BUCKETS + 7
    assert s["steps"] == sorted(s["steps"]) and s["steps"][-1] == 3 * MAX_BUCKETS + 7


def test_the_rows_are_the_best_then_the_failing_each_once():
    rng = random.Random(0)
    members = [{"id": f"m{i:04d}", "score": rng.random(), "state": "running", "flag": False} for i in range(1000)]
    members[5].update(state="failed", score=None)
    members[6]["flag"] = True
    for m in members[10:200]:
        m["state"] = "failed"
    rows = top_rows(members, higher_is_better=False)
    scored = sorted((m for m in members if m["score"] is not None), key=lambda m: m["score"])
    assert [m["id"] for m in rows[:TOP_ROWS]] == [m["id"] for m in scored[:TOP_ROWS]]
    assert len(rows) == TOP_ROWS + MAX_PROBLEM_ROWS and len({m["id"] for m in rows}) == len(rows)
    assert all(m["state"] == "failed" or m["flag"] for m in rows[TOP_ROWS:])
    assert top_rows(members, higher_is_better=True)[0]["id"] == scored[-1]["id"]


def test_the_subset_holds_the_members_nodes_and_their_ancestry_on_other_lanes():
    log = LineageLog("e")
    rec = lambda m, seq, start, ckpt, action=Action.CONTINUE: Lineage(  # noqa: E731
        member=m, seq=seq, start_step=seq * 10, step=seq * 10 + 10, score=1.0, action=action, start_key=start,
        ckpt_key=ckpt, id=f"1-{len(log.nodes)}")
    log.add(rec("m0", 0, "", "m0/0"))          # 0
    log.add(rec("m1", 0, "", "m1/0"))          # 1
    log.add(rec("m2", 0, "", "m2/0"))          # 2
    log.add(rec("m1", 1, "m0/0", "m1/1", Action.EXPLOIT))  # 3: m1 copies m0
    log.add(rec("m0", 1, "m0/0", "m0/1"))      # 4
    log.add(rec("m2", 1, "m1/1", "m2/1", Action.EXPLOIT))  # 5: m2 copies m1, whose line came from m0
    assert [n["i"] for n in log.subset(["m2"])] == [0, 2, 3, 5]  # not m1's own first node, nor m0's last
    assert [n["i"] for n in log.subset(["m0"])] == [0, 4]
    assert log.subset(["nobody"]) == []


def test_the_summary_is_recomputed_only_when_a_segment_was_added():
    b = Bands()
    b.add({"b": 10, "y": 1.0, "h": {}}, SPACES)
    first = b.summary()
    assert b.summary() is first  # a finished run's refreshes sort nothing again
    b.add({"b": 10, "y": None, "h": {}}, SPACES)  # unscored: nothing to show, nothing recomputed
    assert b.summary() is first
    b.add({"b": 10, "y": 3.0, "h": {}}, SPACES)
    assert b.summary()["score"]["p50"] == [2.0] and first["score"]["p50"] == [1.0]
