"""The deceptive-schedule task (workers/deceptive.py, pbt_mq.tools.study.deceptive): its dynamics, its known
optimum, and its report section on hand-made lineage logs. Pure Python: no Redis, no fleet."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from pbt_mq.config.parse import load_file
from pbt_mq.core.model import Lineage
from pbt_mq.tools.study import deceptive as dec
from pbt_mq.tools.study.analysis import Run
from workers.deceptive import NQM, Deceptive

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "workers" / "deceptive.toml"


@pytest.fixture(scope="module")
def cfg():
    return load_file(FILE)


@pytest.fixture(scope="module")
def sol(cfg):
    """The file's problem on its own ready grid: 40 segments of 20 steps, lr in [0.5, 1]."""
    return dec.schedules_for(make_run(cfg, [0.5] * 40))


def make_run(cfg, losses, arm="PBT (vanilla)", seed=0, lrs=None, true=None) -> Run:
    """One member, one segment per ready point, scoring ``losses``."""
    k, recs = cfg.ready.steps, []
    lrs = lrs or [0.5] * len(losses)
    for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
        recs.append(Lineage.from_entry(f"{i + 1}-0", {
            "member": "m0", "seq": str(i + 1), "start_step": str(i * k), "step": str((i + 1) * k), "score": repr(loss),
            "action": "done" if i == len(losses) - 1 else "continue", "start_key": f"m0/{i}" if i else "",
            "ckpt_key": f"m0/{i + 1}", "hparams": json.dumps({"lr": lr})}))
    run = Run("deceptive", arm, seed, "exp", cfg, recs, 1.0, "done")
    run.stats["best_metrics"] = {"true_loss": losses[-1] if true is None else true}
    return run


def test_a_segment_is_the_exact_affine_map_of_the_one_step_recursion():
    nqm = NQM.make(dim=6, cond=100.0, sigma2=0.2, power=0.5)
    m = list(nqm.start)
    for _ in range(37):
        m = [(1 - 0.3 * h) ** 2 * x + 0.3**2 * h * 0.2 for h, x in zip(nqm.curvature, m, strict=True)]
    assert nqm.advance(nqm.start, 0.3, 37) == pytest.approx(m, rel=1e-12)
    assert nqm.loss(m) == pytest.approx(0.5 * sum(h * x for h, x in zip(nqm.curvature, m, strict=True)))
    assert nqm.curvature[0] == 1.0 and nqm.curvature[-1] == pytest.approx(0.01)
    assert nqm.advance(nqm.start, 0.0, 10) == list(nqm.start)  # lr 0: nothing moves, no noise added
    assert math.isinf(nqm.loss(nqm.advance(nqm.start, 5.0, 400)))  # lr > 2 / λ_max: diverges, no exception


def test_the_trainable_is_deterministic_resumable_and_its_noise_is_seeded():
    a = Deceptive({"lr": 0.4}, seed=3)
    a.train(20)
    a.train(20)
    b = Deceptive({"lr": 0.4}, seed=3)
    b.train(40)
    assert a.evaluate()["loss"] == pytest.approx(b.evaluate()["loss"], rel=1e-12)  # 20 + 20 steps or 40 at once
    assert a.evaluate()["loss"] == a.evaluate()["true_loss"]
    c = Deceptive({"lr": 0.01}, seed=9)
    c.load_state_dict(a.state_dict())
    assert c.evaluate()["true_loss"] == a.evaluate()["true_loss"] and c.step == 40
    noisy = [Deceptive({"lr": 0.4}, seed=s, noise=0.1) for s in (1, 1, 2)]
    for t in noisy:
        t.train(40)
    scores = [t.evaluate() for t in noisy]
    assert scores[0] == scores[1] and scores[0]["loss"] != scores[2]["loss"]
    assert scores[0]["true_loss"] == scores[2]["true_loss"] == b.evaluate()["true_loss"]


def test_a_small_lr_wins_the_next_ready_point_and_loses_the_end(cfg):
    """The deception itself, from the file's starting state after 5 segments at the top lr."""
    nqm = NQM.make(**{k: cfg.trainable_args[k] for k in ("dim", "cond", "sigma2", "power")})
    m = nqm.advance(nqm.start, 1.0, 100)
    now = {lr: nqm.loss(nqm.advance(m, lr, 20)) for lr in (1.0, 0.1)}
    later = {lr: nqm.loss(nqm.advance(nqm.advance(m, lr, 200), 0.05, 100)) for lr in (1.0, 0.1)}
    assert now[0.1] < now[1.0] and later[1.0] < later[0.1]


def test_greed_costs_at_least_twice_what_the_best_constant_does(sol):
    f = sol.finals
    greedy, constant = f["greedy"] - f["optimal"], f["best constant"] - f["optimal"]
    assert greedy > 3 * constant and constant > 0.05 * f["optimal"]
    assert len(sol.optimal) == len(sol.greedy) == 40 and sol.segment == 20
    assert all(0.5 <= lr <= 1.0 for lr in (*sol.optimal, *sol.greedy, sol.constant))


def test_greedy_decays_early_and_the_optimum_late(sol):
    mid = math.sqrt(0.5)  # the prior's geometric middle
    greedy_at, optimal_at = (dec.grid_decay_step(s, sol.segment, mid) for s in (sol.greedy, sol.optimal))
    assert greedy_at <= 100 and optimal_at >= 700 and greedy_at < optimal_at
    assert sol.optimal[0] == pytest.approx(1.0, rel=1e-4)  # held at the top of the prior...
    assert sol.optimal[-1] < 0.6 and sol.optimal[-1] < sol.optimal[-4]  # ...and decayed at the end
    assert sol.greedy[-1] == pytest.approx(0.5, rel=1e-3)  # greed ends at the bottom


def test_the_optimum_survives_perturbations(sol):
    best = sol.final(sol.optimal)
    rng = random.Random(0)
    for _ in range(200):
        sched = list(sol.optimal)
        j = rng.randrange(len(sched))
        sched[j] = min(1.0, max(0.5, sched[j] * math.exp(rng.gauss(0, 0.3))))
        assert sol.final(sched) >= best * (1 - 1e-9)
    for _ in range(50):  # and random monotone decays never beat it
        sched = sorted((math.exp(rng.uniform(math.log(0.5), 0.0)) for _ in sol.optimal), reverse=True)
        assert sol.final(sched) > best


def test_regret_is_zero_at_the_optimum_and_positive_elsewhere(cfg, sol):
    opt = make_run(cfg, sol.losses(sol.optimal), lrs=list(sol.optimal))
    assert dec.regret(opt) == pytest.approx(0.0, abs=1e-12)
    greedy = make_run(cfg, sol.losses(sol.greedy), lrs=list(sol.greedy))
    assert dec.regret(greedy) == pytest.approx(sol.finals["greedy"] - sol.finals["optimal"])
    noisy = make_run(cfg, [*sol.losses(sol.optimal)[:-1], 0.001], true=sol.finals["optimal"])
    assert dec.regret(noisy) == pytest.approx(0.0, abs=1e-12)  # regret reads true_loss, not the noisy score


def test_every_arm_parses_and_the_quick_arms_are_a_prefix():
    for arm in dec.ARMS:
        load_file(FILE, [*arm.sets, "seed=1"])
    assert dec.ARMS[:2] == (dec.Arm(dec.VANILLA, ("exploit.rule=truncation", "explore.rule=perturb")),
                            dec.Arm(dec.RANDOM, ("exploit.rule=none", "explore.rule=none")))
    assert dec.QUICK_ARMS == dec.ARMS[:len(dec.QUICK_ARMS)]


def test_the_bootstrap_is_seeded_and_brackets_the_mean():
    xs = [-0.03, -0.01, -0.02, 0.005, -0.04]
    lo, hi = dec.bootstrap_ci(xs)
    assert (lo, hi) == dec.bootstrap_ci(xs) and lo < sum(xs) / len(xs) < hi < 0.006
    assert dec.bootstrap_ci([1.0, 1.0]) == (1.0, 1.0) and all(math.isnan(x) for x in dec.bootstrap_ci([]))


def test_the_section_reports_regret_paired_differences_and_the_known_schedules(cfg, sol):
    runs = []
    for seed in range(3):
        runs.append(make_run(cfg, sol.losses(sol.greedy), seed=seed, lrs=list(sol.greedy)))
        runs.append(make_run(cfg, sol.losses(sol.constants), arm="random search", seed=seed,
                             lrs=list(sol.constants)))
    text = dec.report_deceptive(runs)
    gap = sol.finals["greedy"] - sol.finals["best constant"]
    assert f"| PBT (vanilla) | {sol.finals['greedy']:.4g} [" in text
    assert f"{gap:+.4g} [{gap:+.4g}, {gap:+.4g}]" in text  # the same difference every seed
    assert f"optimal schedule final loss **{sol.finals['optimal']:.4g}**" in text
    assert "- **met**: deceptive: the task is deceptive" in text
    assert "lower median regret than vanilla PBT: none" in text
    assert "is below 0.707 from step 60 and ends at 0.5" in text  # greedy's schedule; the optimum's holds to step 780
    assert "The optimum holds lr 1 until step 780" in text


def test_halving_pairs_regret_by_seed_and_says_whether_a_non_greedy_option_halves_it(cfg, sol):
    greedy = [make_run(cfg, sol.losses(sol.greedy), seed=s, lrs=list(sol.greedy)) for s in range(4)]
    constant = [make_run(cfg, sol.losses(sol.constants), arm="PBT, subpopulations", seed=s, lrs=list(sol.constants))
                for s in range(4)]
    ratio, lo, hi, wins, n = dec.halving(constant, greedy)
    expected = (sol.finals["best constant"] - sol.finals["optimal"]) / (sol.finals["greedy"] - sol.finals["optimal"])
    assert ratio == pytest.approx(expected) and lo == pytest.approx(expected) and hi == pytest.approx(expected)
    assert (wins, n) == (4, 4)
    text = dec.report_deceptive([*greedy, *constant])
    assert "- **met**: deceptive: a non-greedy option ends with at most half of vanilla PBT's regret: best " \
           "PBT, subpopulations" in text and "at most half in 4/4 seeds" in text
    same = [make_run(cfg, sol.losses(sol.greedy), arm="PBT, window 4", seed=s, lrs=list(sol.greedy)) for s in range(4)]
    assert dec.halving(same, greedy)[:4] == (1.0, 1.0, 1.0, 0)
    assert "- **NOT met**: deceptive: a non-greedy option" in dec.report_deceptive([*greedy, *same])
