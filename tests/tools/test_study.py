"""``pbt study``: the analysis on hand-made lineage logs, and the --quick run end to end (a smoke test)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_mq.config.parse import load_file
from pbt_mq.core.model import Lineage
from pbt_mq.tools.study import analysis as study
from pbt_mq.tools.study import deceptive, rising
from pbt_mq.tools.study import report as study_report
from pbt_mq.tools.study import tasks as study_tasks
from pbt_mq.tools.study.paired import ALONE
from pbt_mq.tools.study.run import PAIRED

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "workers" / "toy.toml"
DRIFT = ROOT / "workers" / "nonstationary.toml"


def seg(i: int, member: str, start: int, step: int, score: float, hp: dict, start_key: str = "",
        action: str = "continue") -> Lineage:
    return Lineage.from_entry(f"{i}-0", {
        "member": member, "seq": str(i), "start_step": str(start), "step": str(step), "score": repr(score),
        "action": action, "start_key": start_key, "ckpt_key": f"{member}/{i}", "hparams": json.dumps(hp)})


def make_run(recs: list[Lineage], file=TOY, sets=(), study_name="toy", arm="PBT", wall_s=1.0) -> study.Run:
    return study.Run(study_name, arm, 0, "exp", load_file(file, list(sets)), recs, wall_s, "done")


def toy_log() -> list[Lineage]:
    """m1 falls behind, copies m0 at step 4 (one rewound segment), and passes 1.19 at step 12."""
    return [
        seg(1, "m0", 0, 4, 0.50, {"h0": 1.0, "h1": 0.0}),
        seg(2, "m1", 0, 4, 0.40, {"h0": 0.0, "h1": 1.0}, action="exploit"),
        seg(3, "m0", 4, 8, 0.60, {"h0": 1.0, "h1": 0.0}, start_key="m0/1"),
        seg(4, "m1", 4, 8, 1.00, {"h0": 1.0, "h1": 0.7}, start_key="m0/1"),
        seg(5, "m0", 8, 12, 0.62, {"h0": 1.0, "h1": 0.0}, start_key="m0/3", action="done"),
        seg(6, "m1", 8, 12, 1.195, {"h0": 1.0, "h1": 0.7}, start_key="m1/4", action="done"),
        Lineage.from_entry("7-0", {"member": "m2", "seq": "0", "action": "failed", "ops": "[]"}),  # no score: ignored
    ]


def test_curve_reach_and_final_best_follow_the_population_best():
    run = make_run(toy_log())
    assert study.curve(run) == {4: 0.5, 8: 1.0, 12: 1.195}
    assert study.first_reach(study.curve(run), 1.19) == 12 and study.first_reach(study.curve(run), 1.2) is None
    assert study.final_best(run) == 1.195
    assert study.compute_steps(run) == 24 and study.actions(run)["exploit"] == 1


def test_best_schedule_goes_through_the_exploit():
    sched = study.best_schedule(make_run(toy_log()))
    assert [(s["member"], s["from_step"], s["to_step"], s["hparams"]["h1"]) for s in sched] == [
        ("m0", 0, 4, 0.0), ("m1", 4, 8, 0.7), ("m1", 8, 12, 0.7)]
    assert study.mean_log(sched, "h0", 0, 12) == pytest.approx(1.0)


def test_min_mode_curves_take_the_lowest_score_and_treat_inf_as_worst():
    recs = [seg(1, "m0", 0, 20, 0.5, {"lr": 1.0}), seg(2, "m1", 0, 20, math.inf, {"lr": 3.0}),
            seg(3, "m0", 20, 40, 0.2, {"lr": 0.1}, start_key="m0/1"), seg(4, "m1", 20, 40, 0.3, {"lr": 0.01})]
    run = make_run(recs, file=DRIFT, study_name="drift")
    assert study.curve(run) == {20: 0.5, 40: 0.2}
    assert study.best_hparams(run) == {"lr": 0.1}
    assert study.mean_log(study.best_schedule(run), "lr", 0, 40) == pytest.approx(math.sqrt(0.1))


def test_spread_handles_never_and_nothing():
    assert study.spread([1.0, 2.0, 3.0, 4.0]) == (2.5, 1.75, 3.25)
    assert study.spread([12.0, math.inf, math.inf]) == (math.inf, math.inf, math.inf)
    assert study.spread([8.0, 12.0, math.inf, math.inf])[0] == math.inf
    assert all(math.isnan(x) for x in study.spread([]))


def test_overrides_built_by_the_study_parse_back_exactly():
    cfg = load_file(DRIFT)
    grid = study_tasks.lr_grid(cfg, 4)
    assert grid[0]["lr"] == pytest.approx(cfg.spaces["lr"].low) and grid[-1]["lr"] == pytest.approx(cfg.spaces["lr"].high)
    best = {"lr": 0.1 + 0.2, "momentum": 0.5, "weight_decay": 1.1e-06, "batch_size": 64}
    back = load_file(ROOT / "workers" / "digits.toml", ["population.size=1", study_tasks.initial_set([best])])
    assert back.initial == (best,)
    assert load_file(DRIFT, [study_tasks.initial_set(grid[:3] + grid[:1] * 5)]).initial[0]["lr"] == grid[0]["lr"]


def test_toy_verdicts_compare_reach_steps_across_arms():
    fast, slow = make_run(toy_log()), make_run(toy_log()[:4], arm="explore only")
    verdicts = study_report.toy_targets({"PBT": [fast] * 10, "explore only": [slow] * 10})
    assert verdicts[0].startswith("- **met**") and "10/10" in verdicts[0]
    assert verdicts[1].startswith("- **met**") and "median step 12 vs explore only never" in verdicts[1]
    verdicts = study_report.toy_targets({"PBT": [fast] * 8 + [slow] * 2, "explore only": [fast] * 10})
    assert verdicts[0].startswith("- **NOT met**") and "8/10" in verdicts[0]
    assert verdicts[1].startswith("- **NOT met**")


def test_digits_verdicts_use_medians_of_accuracy_and_wall_time():
    def run(arm, acc, wall):
        recs = [seg(1, "m0", 0, 400, acc, {"lr": 0.1})]
        return make_run(recs, file=ROOT / "workers" / "digits.toml", study_name="digits", arm=arm, wall_s=wall)

    arms = {"PBT": [run("PBT", a, w) for a, w in ((0.97, 10.0), (0.98, 10.5), (0.96, 30.0))],
            "random search": [run("random search", a, w) for a, w in ((0.96, 10.0), (0.99, 9.9), (0.95, 9.0))]}
    met_acc, wall = study_report.digits_targets(arms)
    assert met_acc.startswith("- **met**") and "0.9700 vs random search's 0.9600" in met_acc
    assert wall.startswith("- **met**") and "1.06 x random search's" in wall  # 10.5 / 9.9: the median, not the outlier
    arms["PBT"][1].wall_s = 11.5
    assert study_report.digits_targets(arms)[1].startswith("- **NOT met**")


@pytest.mark.integration  # every task, real training included: minutes on the 2-core CI machine
@pytest.mark.timeout(1200)
def test_pbt_study_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "study"
    res = subprocess.run([sys.executable, "-m", "pbt_mq", "study", "--quick", "-o", str(out)],
                         capture_output=True, text=True, timeout=1100, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    text = (out / "results.md").read_text()
    for heading in ("## The paper's toy", "## Digits", "## Non-stationary", "## Non-stationary, asynchronous",
                    "## Reinforcement learning", "## Character language", "## Two objectives", "## A deceptive schedule",
                    "## Targets"):
        assert heading in text
    runs = json.loads((out / "runs.json").read_text())
    real = {task.name: len(task.arms) + 1 for task in PAIRED}  # its arms, and random search's best config alone
    assert len(runs) == 8 + 4 + 3 + 9 + 3 + sum(real.values()) + len(deceptive.QUICK_ARMS) and all(r["state"] == "done" for r in runs)
    assert {r["arm"] for r in runs if r["study"] == "deceptive"} == {arm.label for arm in deceptive.ARMS}
    assert "deceptive: the task is deceptive" in text
    assert {r["arm"] for r in runs if r["study"] == "pareto"} == {"MO-PBT", "PBT, weighted sum", "random search"}
    assert all(len(r["final_points"]) == 4 for r in runs if r["study"] == "pareto")  # every member's last values
    assert "pareto: MO-PBT's median hypervolume" in text
    assert {r["arm"] for r in runs if r["study"] == "rising"} == {arm.label for arm in rising.ARMS}
    assert "seeds it beats the fixed population" in text  # issue 23's options, paired with the fixed population
    for task in PAIRED:  # PBT, random search and issue 23's arms at the same compute; RS's best config alone
        arms = {r["arm"]: r for r in runs if r["study"] == task.name}
        assert set(arms) == {arm.label for arm in task.arms} | {ALONE}
        assert arms["random search"]["actions"].get("exploit", 0) == 0 and arms[ALONE]["steps_trained"] < \
            arms["random search"]["steps_trained"]
        assert all(task.heldout in r["best_metrics"] for r in arms.values())
        assert f"{task.name}: PBT's median final" in text and "Schedules PBT found" in text
    assert "seeds it beats random search" in text
    assert {r["arm"] for r in runs if r["study"] == "digits"} == {"PBT", "random search", "PB2", "best RS config alone"}
    assert all(r["replay_mismatches"] == 0 for r in runs), "every decision, PB2's included, replays from the log"
    pb2_ops = [op for r in runs if r["arm"] == "PB2" for op in r["exploit_ops"]]
    assert any(op.startswith("pb2: upto=") for op in pb2_ops)
    steps = {r["arm"]: r["steps_trained"] for r in runs if r["study"] == "digits"}
    assert steps["random search"] == 4 * 100 and steps["best RS config alone"] == 100
    pytest.importorskip("matplotlib")
    for name in ("toy.png", "digits.png", "drift.png", "rising.png", "pareto.png", "cartpole.png", "charlm.png",
                 "deceptive.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in text
    assert not (out / "work" / "checkpoints").exists()


# ---------------------------------------------------------------- PBT vs random search on real training


def paired_run(arm: str, seed: int, finals: dict[str, float], task=None, heldout: float = 0.0) -> study.Run:
    """Two members, two segments each; ``finals`` are the members' scores at step 16."""
    from pbt_mq.tools.study.rl import CARTPOLE

    task = task or CARTPOLE
    hp = {"lr": 1e-3, "ent_coef": 1e-3, "clip_range": 0.2, "gae_lambda": 0.9, "n_epochs": 5, "batch_size": 64}
    recs, i = [], 0
    for m, final in finals.items():
        i += 1
        recs.append(seg(i, m, 0, 8, final / 2, hp))
        i += 1
        recs.append(seg(i, m, 8, 16, final, {**hp, "lr": 2e-3} if arm == "PBT" else hp, start_key=f"{m}/{i - 1}",
                        action="done"))
    run = study.Run(task.name, arm, seed, "exp", load_file(ROOT / "workers" / task.file), recs, 10.0, "done")
    run.stats["best_metrics"] = {task.heldout: heldout}
    return run


def test_paired_verdict_needs_pbt_outside_the_iqr_overlap():
    from pbt_mq.tools.study.rl import CARTPOLE

    pbt = [paired_run("PBT", s, {"m0": v, "m1": 9.0}, heldout=v - 50) for s, v in enumerate((400.0, 450.0, 500.0))]
    rs = [paired_run("random search", s, {"m0": v, "m1": 9.0}) for s, v in enumerate((200.0, 300.0, 350.0))]
    verdict, wall, held = CARTPOLE.targets({"PBT": pbt, "random search": rs})
    assert verdict.startswith("- **met**") and "450 [425, 475] vs random search's 300 [250, 325]" in verdict
    assert "outside the IQR overlap (3 seeds)" in verdict
    assert "1.00 x random search's" in wall and "+0% steps" in wall
    assert "PBT 400 vs random search 0" in held
    rs = [paired_run("random search", s, {"m0": 9.0, "m1": v}) for s, v in enumerate((300.0, 440.0, 460.0))]
    # RS's median 440 is below PBT's 450, but its 75th percentile 450 passes PBT's 25th, 425
    verdict = CARTPOLE.targets({"PBT": pbt, "random search": rs})[0]
    assert verdict.startswith("- **NOT met**") and "median is better, but the IQRs overlap" in verdict
    text, _ = CARTPOLE.section(pbt + rs)
    assert "| PBT | 450 [425, 475] | 400 450 500 | 450 [425, 475] |" in text
    assert "| 0 | 0.001 -> 0.002 (1) |" in text  # lr of PBT's best model: changed once


def test_paired_verdict_reads_a_loss_lower_is_better():
    from pbt_mq.tools.study.lm import CHARLM

    hp = {"lr": 1e-3, "warmup": 10, "dropout": 0.1, "weight_decay": 0.01}

    def run(arm, seed, loss):
        recs = [seg(1, "m0", 0, 40, loss + 1, hp), seg(2, "m0", 40, 80, loss, hp, start_key="m0/1", action="done"),
                seg(3, "m1", 0, 80, 3.0, hp, action="done")]
        r = study.Run("charlm", arm, seed, "exp", load_file(ROOT / "workers" / "charlm.toml"), recs, 5.0, "done")
        r.stats["best_metrics"] = {"test_loss": loss + 0.1}
        return r

    arms = {"PBT": [run("PBT", s, v) for s, v in enumerate((1.9, 2.0, 2.1))],
            "random search": [run("random search", s, v) for s, v in enumerate((2.3, 2.4, 2.5))]}
    verdict = CHARLM.targets(arms)[0]
    assert verdict.startswith("- **met**") and "validation loss 2 [1.95, 2.05] vs random search's 2.4 [2.35, 2.45]" in verdict
    arms["PBT"], arms["random search"] = arms["random search"], arms["PBT"]
    assert "PBT is not better" in CHARLM.targets(arms)[0]


def test_every_task_is_in_the_study_by_default_and_only_refuses_an_unknown_one(tmp_path):
    from pbt_mq.tools.study.run import ALL

    assert {"toy", "digits", "drift", "cartpole", "charlm"} <= set(ALL)
    res = subprocess.run([sys.executable, "-m", "pbt_mq", "study", "--only", "cartpole,nope", "-o", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "unknown study 'nope'" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "pbt_mq", "study", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    usage = " ".join(res.stdout.split())  # as argparse wraps it
    assert all(name in usage for name in ("cartpole", "charlm", "pareto", "rising")) and "(default: all)" in usage


def test_arms_narrows_every_task_to_the_named_arms_and_its_baselines():
    scale = study_tasks.Scale(toy_seeds=1, seeds=1, digits=(), drift=(), arms=("PB2",))
    assert [a.label for a in scale.pick(deceptive.ARMS, (deceptive.VANILLA, deceptive.RANDOM))] == [
        deceptive.VANILLA, deceptive.RANDOM, "PB2"]
    for task in PAIRED:
        assert [a.label for a in scale.pick(task.arms, ("random search",))] == ["random search", "PB2"]
    everything = study_tasks.Scale(toy_seeds=1, seeds=1, digits=(), drift=())
    assert everything.pick(rising.ARMS, ()) == rising.ARMS


def test_an_unknown_arm_is_one_line_and_runs_nothing(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pbt_mq", "study", "--arms", "PB3", "-o", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("pbt study: error: --arms: unknown arm 'PB3'; known: ")
    assert "PBT, ttest; " in res.stderr  # labels hold commas: one label per --arms
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
