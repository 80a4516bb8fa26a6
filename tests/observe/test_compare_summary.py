"""``observe.compare``: one experiment's summary from its records (``pbt compare`` and the dashboard's
compare view; tests/dashboard/test_compare_view.py runs both against real processes)."""

from __future__ import annotations

import math

from pbt_mq.core.model import Action, Lineage
from pbt_mq.observe.compare import Summary, comparable, summarize, table

T0 = 1_700_000_000_000


def rec(member: str, seq: int, score: float, ms: int, start: str = "", action: Action = Action.CONTINUE) -> Lineage:
    return Lineage(member=member, seq=seq, start_step=seq * 10, step=seq * 10 + 10, score=score, action=action,
                   start_key=start, ckpt_key=f"{member}/{seq}", hparams={"lr": 0.1 * (seq + 1)}, id=f"{T0 + ms}-0")


def test_a_summary_tracks_the_best_per_step_over_time_and_the_final_bests_schedule():
    recs = [rec("m0", 0, 3.0, 1000), rec("m1", 0, 2.0, 1500), rec("m0", 1, math.nan, 2000, "m0/0"),
            rec("m1", 1, 1.0, 2500, "m0/0", Action.EXPLOIT), rec("m1", 2, 0.5, 4000, "m1/1")]
    s = summarize(recs, experiment="e", name="n", metric="loss", mode="min", state="done", created_ms=T0)
    assert s.by_step == [(10, 2.0), (20, 1.0), (30, 0.5)]  # a NaN score is no best
    assert s.by_time == [(1.0, 3.0), (1.5, 2.0), (2.5, 1.0), (4.0, 0.5), (4.0, 0.5)]
    assert (s.final, s.final_member, s.final_step, s.wall_s, s.segments) == (0.5, "m1", 30, 4.0, 5)
    # m1's line came from m0's first segment: the schedule follows the checkpoint, not the member
    assert [(p["from_step"], p["to_step"], p["hparams"]["lr"]) for p in s.schedule] == [
        (0, 10, 0.1), (10, 20, 0.2), (20, 30, 0.30000000000000004)]
    up = summarize(recs, experiment="e", name="n", metric="q", mode="max", state="done", created_ms=T0)
    assert up.final == 3.0 and up.final_member == "m0" and up.by_step[0] == (10, 3.0)


def test_nothing_scored_yet_is_an_empty_summary():
    s = summarize([], experiment="e", name="n", metric="q", mode="max", state="running", created_ms=T0)
    assert s.final is None and s.by_step == [] and s.schedule == [] and "e" in table([s, s])


def test_only_one_metric_compares_and_the_table_ranks_by_final():
    a = Summary("a", "n", "q", "max", "done", final=1.0)
    b = Summary("b", "n", "q", "max", "done", final=2.0)
    c = Summary("c", "n", "loss", "min", "done", final=0.1)
    assert comparable([a, b]) is None and "different things" in (comparable([a, c]) or "")
    lines = table([a, b]).splitlines()
    assert lines[1].startswith("b ") and "+0" in lines[1] and lines[2].startswith("a ") and "-1" in lines[2]
