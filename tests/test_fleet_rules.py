"""The rules users ask for (issue 17), end to end: real pbt-worker and pbt-arbiter processes, a real
redis-server, the toy. Burn-in, failed members replaced, plug-in rules, synchronous rounds."""

from __future__ import annotations

import importlib.util
import json
import time

from helpers import (
    PAPER_INIT_4,
    ROOT,
    TTEST_SETS,
    WINDOW_SETS,
    early_decisions,
    launch,
    lineage_counts,
    pbt,
    status,
    subpopulation_errors,
    window_errors,
)

from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action
from pbt_mq.observe import plot
from pbt_mq.rules.pareto import dominates
from pbt_mq.rules.plugins import allow_plugins
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.report import summary


def wait_done(fleet, redis_url: str, exp: str, code: int = 0, timeout: int = 240) -> None:
    res = pbt("wait", exp, "--timeout", str(timeout), "--redis", redis_url, timeout=timeout + 20)
    assert res.returncode == code, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"


def start(fleet, workers: int = 2, *arbiter_args: str) -> None:
    for i in range(workers):
        fleet.start("worker", f"w{i + 1}", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1", "--claim-idle-ms", "2000", "--reap-interval-ms", "500", *arbiter_args)


def test_burn_in_no_exploit_before_step_n(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4,
                 "exploit.burn_in_steps=40", "exploit.compare=latest", "trainable_args.delay_s=0.01")
    wait_done(fleet, redis_url, exp)
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert exploits, "the toy exploits once the burn-in is over"
    assert min(rec.step for rec in exploits) >= 40 and min(rec.parent_step for rec in exploits) >= 40, \
        [(rec.member, rec.step, rec.parent_step) for rec in exploits]
    assert {rec.action for rec in recs if rec.step < 40} == {Action.CONTINUE}
    assert max(lineage_counts(r, exp).values()) == 1
    assert replay_decisions(load_config(r, exp), recs) == []
    assert status(redis_url, exp)["state"] == "done"


def test_replace_a_member_failing_on_its_first_segment_and_at_random_later(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4,
                 "trainable=tests.trainables:Flaky", "worker.max_retries=1")
    wait_done(fleet, redis_url, exp)
    st = status(redis_url, exp)
    assert st["state"] == "done" and st["reason"] == "all members finished", st  # none failed
    assert [m["state"] for m in st["members"]] == ["done"] * 4 and all(m["scored_step"] == 100 for m in st["members"])
    recs = records(r, exp)
    replaced = [rec for rec in recs if rec.action is Action.REPLACED]
    first = [rec for rec in replaced if rec.member == "m000" and rec.seq == 0]
    assert first and "RuntimeError: boom: the first segment" in first[0].reason  # the traceback, kept
    assert "Traceback (most recent call last)" in first[0].reason
    assert max(lineage_counts(r, exp).values()) == 1  # each (member, seq) decided once
    assert replay_decisions(load_config(r, exp), recs) == []


def test_a_trainable_that_always_raises_ends_the_experiment_failed_with_the_reason(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=3", "population.initial=[]",
                 "trainable=tests.trainables:AlwaysRaises", "worker.max_retries=0", "worker.max_replacements=2")
    wait_done(fleet, redis_url, exp, code=1)
    st = status(redis_url, exp)
    assert st["state"] == "failed" and "ValueError: this trainable is broken" in st["reason"], st
    assert st["reason"].startswith("every member failed; m000: ")
    assert {m["state"] for m in st["members"]} == {"failed"}
    for m in ("m000", "m001", "m002"):
        actions = [rec.action for rec in records(r, exp) if rec.member == m]
        assert actions == [Action.REPLACED, Action.REPLACED, Action.FAILED], (m, actions)


def test_replace_a_member_whose_segment_keeps_killing_its_workers(fleet, redis_url, r, tmp_path):
    start(fleet, 3)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4,
                 "trainable=tests.trainables:KillsItsWorker", "worker.max_retries=0", "stop.steps=60")
    wait_done(fleet, redis_url, exp)
    assert sum(p.poll() is not None for name, p in fleet.procs.items() if name.startswith("w")) == 2
    st = status(redis_url, exp)
    assert [m["state"] for m in st["members"]] == ["done"] * 4
    replaced = [rec for rec in records(r, exp) if rec.action is Action.REPLACED]
    assert [(rec.member, rec.seq) for rec in replaced] == [("m000", 0)]
    assert "stopped heartbeating; gave up after 1 requeues" in replaced[0].reason
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []


PLUGIN_SETS = ("exploit.rule=tests.plugin_rules:copy_the_best", "explore.rule=tests.plugin_rules:HalveOrDouble")


def test_a_plug_in_rule_drives_the_decisions_and_replays(fleet, redis_url, r, tmp_path):
    fleet.start("arbiter", "a2", "--claim-idle-ms", "2000")  # no plug-ins here: it leaves the experiment to a1
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4, *PLUGIN_SETS)
    deadline = time.monotonic() + 60  # a2 says so while the experiment runs (no worker yet: it cannot end first)
    while not r.hexists(Keys(exp).refused, "a2"):
        assert time.monotonic() < deadline, fleet.all_logs()
        time.sleep(0.1)
    start(fleet, 2, "--plugins", "tests.plugin_rules")
    wait_done(fleet, redis_url, exp)
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert exploits and all(rec.parent == rec.leaderboard[0][0] for rec in exploits)
    assert all("--(x0.5)-->" in op or "--(x2.0)-->" in op for rec in exploits for op in rec.ops)
    st = status(redis_url, exp)
    assert st["state"] == "done" and "not on this process's plug-in allowlist" in st["refused"]["a2"]
    assert max(lineage_counts(r, exp).values()) == 1
    allow_plugins(["tests.plugin_rules"])  # replay imports the same module, from its own allowlist
    try:
        assert replay_decisions(load_config(r, exp), recs) == []
    finally:
        allow_plugins(None)


def test_an_experiment_naming_a_plug_in_no_arbiter_allows_fails_with_that_reason(fleet, redis_url, tmp_path):
    start(fleet, 1)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=2", *PLUGIN_SETS)
    wait_done(fleet, redis_url, exp, code=1, timeout=120)
    st = status(redis_url, exp)
    assert st["state"] == "failed" and "no arbiter decided its events" in st["reason"]
    assert "a1: exploit.rule 'tests.plugin_rules:copy_the_best': module 'tests.plugin_rules' is not on this " \
           "process's plug-in allowlist (empty)" in st["reason"], st["reason"]


def test_synch_no_member_starts_past_a_ready_point_before_every_live_member_reported_it(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4, "stop.steps=60",
                 "exploit.synch=true", "trainable_args.delay_s=0.01")
    wait_done(fleet, redis_url, exp)
    recs = records(r, exp)
    decided = [rec for rec in recs if rec.action in (Action.CONTINUE, Action.EXPLOIT)]
    assert decided and [rec for rec in decided if rec.action is Action.EXPLOIT]
    # the next segment is queued by the decision: none before the round is complete
    assert early_decisions(r, exp, recs) == []
    assert all(rec.n == 4 for rec in decided)  # each ranked on the whole board of its ready point
    assert max(lineage_counts(r, exp).values()) == 1
    assert replay_decisions(load_config(r, exp), recs) == []
    assert [m["state"] for m in status(redis_url, exp)["members"]] == ["done"] * 4


def test_multi_objective_pbt_reports_a_non_dominated_front_and_exports_it(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", "stop.steps=100",
                 file=str(ROOT / "workers" / "pareto.toml"))
    wait_done(fleet, redis_url, exp)
    st = status(redis_url, exp)
    assert st["state"] == "done" and st["best"] is None and st["metrics"] == ["accuracy", "density"]
    front = {row["member"]: (row["values"]["accuracy"], -row["values"]["density"]) for row in st["front"]}
    assert front and not any(dominates(front[a], front[b]) for a in front for b in front if a != b)
    text = pbt("status", exp, "--redis", redis_url).stdout
    assert f"Pareto front: {len(front)} of 4 members" in text
    out = tmp_path / "front"
    res = pbt("export", exp, "--front", "-o", str(out), "--redis", redis_url)
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "front.json").read_text())["front"] == st["front"]
    assert all((out / m / "checkpoint.safetensors").exists() and (out / m / "schedule.json").exists() for m in front)
    best = pbt("export", exp, "--best", "-o", str(tmp_path / "best"), "--redis", redis_url)
    assert best.returncode == 1 and "a Pareto front, not one best; export the front with --front" in best.stderr
    assert replay_decisions(load_config(r, exp), records(r, exp)) == []
    assert max(lineage_counts(r, exp).values()) == 1
    assert f"Pareto front: {len(front)} of 4 members" in summary(r, exp, st, 1.0)  # pbt local's summary
    if importlib.util.find_spec("matplotlib"):
        assert "front" in plot.write(plot.collect(r, exp), tmp_path / "report.png")  # the panels' labels


def test_issue_23_rules_end_to_end_and_replayed(fleet, redis_url, r, tmp_path):
    """ttest on windows of 3 scores with crossover; and truncation on windows of 3 with sub-populations
    [1, 2, 0] in synchronous rounds: every decision replays, every board holds the windows' means."""
    start(fleet)
    store = f"file://{tmp_path / 'ckpt'}"
    ttest = launch(redis_url, store, *TTEST_SETS)
    windowed = launch(redis_url, store, *WINDOW_SETS)
    for exp in (ttest, windowed):
        wait_done(fleet, redis_url, exp)
        recs = records(r, exp)
        assert replay_decisions(load_config(r, exp), recs) == []
        assert window_errors(recs, 3) == []
        assert max(lineage_counts(r, exp).values()) == 1
        assert [rec for rec in recs if rec.action is Action.EXPLOIT], exp
    recs = records(r, windowed)
    assert subpopulation_errors(recs, (1, 2, 0), 4) == []
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert {rec.member for rec in exploits} == {"m000", "m001", "m003", "m004"}  # m002, m005: never
    assert {rec.parent for rec in exploits if rec.member in ("m001", "m004")} <= {"m001", "m002", "m004", "m005"}
    exploits = [rec for rec in records(r, ttest) if rec.action is Action.EXPLOIT]
    assert all(set(rec.windows or {}) >= {rec.member, rec.parent} for rec in exploits)  # what the test compared
    assert any(op.startswith("crossover: ") for rec in exploits for op in rec.ops or [])
    assert early_decisions(r, windowed, records(r, windowed)) == []
    assert r.hget(Keys(windowed).windows, "m000") is not None
