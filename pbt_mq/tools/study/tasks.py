"""The tasks of ``pbt study``: the experiments each runs, arm by arm and seed by seed, on one fleet."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pbt_mq
from pbt_mq.config.experiment import Experiment
from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Meta
from pbt_mq.core.protocol import ReadyEvent
from pbt_mq.observe.stats import experiment_stats
from pbt_mq.state.experiment import launch
from pbt_mq.state.lineage import records, replay_decisions
from pbt_mq.tools.local import watch
from pbt_mq.tools.study.analysis import Arm, Run, best_hparams, best_record, final_best

# The examples are files of a checkout (workers/ beside pbt_mq/), read by path: never an installed package,
# never imported here. The study's worker processes import their trainables from the checkout's root.
EXAMPLES = Path(pbt_mq.__file__).resolve().parents[1] / "workers"


@dataclass
class Fleet:
    """A live fleet (tools.fleet.fleet) and where its checkpoints go."""

    r: Any
    procs: list  # of subprocess.Popen: the arbiter, then the workers
    wd: Path
    timeout_s: float
    runs: list[Run] = field(default_factory=list)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Scale:
    """How much to run: the full study, or the CI smoke test (--quick)."""

    toy_seeds: int
    seeds: int
    digits: tuple[str, ...]
    drift: tuple[str, ...]
    rising_seeds: int = 12
    rising: tuple[str, ...] = ()
    pareto: tuple[str, ...] = ()
    quick: bool = False  # study.paired's tasks read their --quick settings from it
    arms: tuple[str, ...] = ()  # --arms: run only these arms (and each task's baseline); () runs them all

    def pick(self, arms: Sequence[Arm], baselines: Sequence[str]) -> tuple[Arm, ...]:
        """The arms to run: all, or those --arms names plus the baselines the task's report pairs with."""
        return tuple(a for a in arms if not self.arms or a.label in self.arms or a.label in baselines)


FULL = Scale(toy_seeds=10, seeds=5, digits=(), drift=())
QUICK = Scale(
    toy_seeds=2,
    seeds=1,
    digits=("population.size=4", "stop.steps=100"),
    drift=("population.size=4", "stop.steps=200", "trainable_args.switch_step=100"),
    rising_seeds=1,
    rising=("population.size=4", "stop.steps=200", "trainable_args.switch_step=100"),
    pareto=("population.size=4", "stop.steps=100"),
    quick=True,
)



def toy_arms(noise_std: float) -> tuple[Arm, ...]:
    """The paper's four: explore-only walks h by the same noise PBT's explore uses (workers/toy.py)."""
    return (
        Arm("PBT"),
        Arm("exploit only", ("explore.rule=none",)),
        Arm("explore only", ("exploit.rule=none", "explore.rule=none", f"trainable_args.explore_std={noise_std!r}")),
        Arm("neither", ("exploit.rule=none", "explore.rule=none")),
    )


DIGITS_ARMS = (
    Arm("PBT"),
    Arm("random search", ("exploit.rule=none", "explore.rule=none")),
    Arm("PB2", ("explore.rule=pb2",)),
)
DRIFT_ARMS = (
    Arm("PBT"),
    Arm("fixed lr (grid)", ("exploit.rule=none", "explore.rule=none")),  # initial: set from the prior
    Arm("PB2", ("explore.rule=pb2",)),
)


# ---------------------------------------------------------------- running


def run_experiment(fleet: Fleet, study: str, arm: str, file: Path, sets: Sequence[str], seed: int) -> Run:
    """Launch one experiment on the fleet, wait for it, read its lineage, drop its checkpoints."""
    cfg = load_file(file, [*sets, f"seed={seed}"])
    store = fleet.wd / "checkpoints"
    exp = launch(fleet.r, cfg, f"file://{store}")
    final = watch(fleet.r, exp, fleet.procs, time.monotonic(), fleet.timeout_s, live=False)
    meta = Meta.read(fleet.r, Keys(exp).meta, "created_ms", "done_ms")
    wall_s = ((meta.done_ms or 0) - (meta.created_ms or 0)) / 1000
    recs = records(fleet.r, exp)
    run = Run(study, arm, seed, exp, cfg, recs, wall_s, final["state"], experiment_stats(fleet.r, exp),
              len(replay_decisions(cfg, recs)))
    shutil.rmtree(store / exp, ignore_errors=True)
    fleet.runs.append(run)
    print(f"  {study:<7} {arm:<18} seed {seed}: {run.state} in {wall_s:5.1f} s, "
          f"final best {cfg.metric} {final_best(run):.4g}", flush=True)
    return run


def best_metrics(r: Any, run: Run) -> dict[str, float]:
    """Every metric the final best segment reported (its ready event carries them)."""
    rec = best_record(run)
    for _, fields in r.xrange(Keys(run.exp).events):
        if fields.get(b"member", b"").decode() == rec.member and int(fields.get(b"seq", -1)) == rec.seq:
            return dict(ReadyEvent.decode(fields[b"msg"]).metrics)
    return {}


def warm_up(fleet: Fleet, file: Path, sets: Sequence[str]) -> None:
    """One short unrecorded run, so every worker has imported the trainable before anything is timed."""
    base = [*sets, f"population.size={max(2, len(fleet.procs) - 1)}", "exploit.rule=none"]  # procs: arbiter + workers
    cfg = load_file(file, [*base, f"stop.steps={load_file(file, base).ready.steps or 1}"])
    exp = launch(fleet.r, cfg, f"file://{fleet.wd / 'checkpoints'}")
    watch(fleet.r, exp, fleet.procs, time.monotonic(), fleet.timeout_s, live=False)


def toml_value(v: Any) -> str:
    """A TOML literal for a --set override (strings quoted, floats exact)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def initial_set(configs: Sequence[dict[str, Any]]) -> str:
    tables = ", ".join("{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in sorted(c.items())) + "}" for c in configs)
    return f"population.initial=[{tables}]"


def lr_grid(cfg: Experiment, n: int) -> list[dict[str, float]]:
    """n learning rates evenly spaced in log over the prior: the fixed-value baseline."""
    space = cfg.spaces["lr"]
    lo, hi = math.log(space.low), math.log(space.high)
    return [{"lr": math.exp(lo + (hi - lo) * i / (n - 1))} for i in range(n)]


def toy_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "toy.toml"
    warm_up(fleet, file, ())
    arms = toy_arms(load_file(file).explore.perturb.noise_std)
    return [run_experiment(fleet, "toy", arm.label, file, arm.sets, seed)
            for arm in arms for seed in range(scale.toy_seeds)]


def digits_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "digits.toml"
    warm_up(fleet, file, scale.digits)
    runs = []
    for seed in range(scale.seeds):
        order = DIGITS_ARMS if seed % 2 == 0 else DIGITS_ARMS[::-1]  # alternate, so drift in load evens out
        done = {arm.label: run_experiment(fleet, "digits", arm.label, file, [*scale.digits, *arm.sets], seed)
                for arm in order}
        runs += done.values()
        best = best_hparams(done["random search"])
        alone = [*scale.digits, "population.size=1", initial_set([best]), *DIGITS_ARMS[1].sets]
        runs.append(run_experiment(fleet, "digits", "best RS config alone", file, alone, seed))
    return runs


def drift_study(fleet: Fleet, scale: Scale) -> list[Run]:
    file = EXAMPLES / "nonstationary.toml"
    cfg = load_file(file, list(scale.drift))
    grid = initial_set(lr_grid(cfg, cfg.population))
    warm_up(fleet, file, scale.drift)
    runs = []
    for seed in range(scale.seeds):
        for arm in DRIFT_ARMS if seed % 2 == 0 else DRIFT_ARMS[::-1]:
            extra = (grid,) if arm.label.startswith("fixed") else ()
            runs.append(run_experiment(fleet, "drift", arm.label, file, [*scale.drift, *arm.sets, *extra], seed))
    return runs

