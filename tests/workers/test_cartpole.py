"""workers/cartpole.py: PPO (stable-baselines3) resumes to the bit from a plain-data checkpoint.

The real libraries, no fakes: a checkpoint goes through torch.save and torch.load(weights_only=True)
(as a worker's does) into a member built with another seed, and training continues exactly as
if it had never stopped. Also the contract of the SB3 and gymnasium internals the adapter uses.
"""

from __future__ import annotations

import importlib.metadata
import io
import re

import pytest
from contracts import ROOT, tomllib
from packaging.requirements import Requirement
from packaging.version import Version
from services import IN_CI

try:
    import torch

    from pbt_mq.observe.replay import same_state
    from workers.cartpole import CartPole
except ImportError as exc:  # the `rl` extra: CI installs it, so there this fails, never skips
    if IN_CI:
        raise
    pytest.skip(f"workers/cartpole.py needs the rl extra (pip install 'pbt-mq[rl]'): {exc}", allow_module_level=True)

HP = {"lr": 1e-3, "ent_coef": 1e-3, "clip_range": 0.2, "gae_lambda": 0.9, "n_epochs": 5, "batch_size": 64}
OTHER = {**HP, "lr": 5e-4, "ent_coef": 0.01, "clip_range": 0.3, "gae_lambda": 0.95, "n_epochs": 2, "batch_size": 128}
SMALL = {"n_envs": 4, "n_steps": 32, "eval_episodes": 3}


@pytest.fixture(autouse=True)
def one_thread():
    """As pbt local runs workers on a 2-core machine; tiny ops on two contended threads crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def member(hp: dict, seed: int) -> CartPole:
    torch.manual_seed(seed)  # as the worker and pbt replay do before constructing
    return CartPole(hp, seed=seed, **SMALL)


def through_disk(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # plain tensors and data only, or this raises


def extra_range(extra: str, name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    return next(Requirement(d) for d in deps if re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0] == name)


@pytest.mark.parametrize("name", ["stable-baselines3", "gymnasium"])
def test_the_installed_rl_libraries_are_in_the_declared_range(name):
    version = importlib.metadata.version(name)
    assert extra_range("rl", name).specifier.contains(Version(version), prereleases=True), version


def test_a_checkpoint_continues_exactly_in_another_member():
    a = member(HP, seed=7)
    a.train(2)
    saved = through_disk(a.state_dict())
    a.apply(OTHER)
    a.train(3)
    b = member(OTHER, seed=3)
    b.train(1)  # other weights, env states and RNG states, all to be replaced
    b.load_state_dict(saved)
    b.apply(OTHER)
    b.train(3)
    assert b.evaluate() == a.evaluate()
    assert same_state(b.state_dict(), a.state_dict())
    assert b.model.num_timesteps == a.model.num_timesteps == 5 * 4 * 32


def test_members_sharing_a_process_do_not_disturb_each_other():
    """PPO draws from the process-wide torch, numpy and random generators; a worker trains many
    members in one process, in any order."""
    alone = member(HP, seed=1)
    alone.train(2)
    alone.train(2)
    a, b = member(HP, seed=1), member(OTHER, seed=2)
    a.train(2)
    b.train(3)
    torch.rand(5)  # anything else the process draws meanwhile
    a.train(2)
    assert same_state(a.state_dict(), alone.state_dict())


def test_hyperparameters_are_applied_in_place():
    m = member(HP, seed=0)
    m.train(1)
    adam = {k: v.clone() for k, v in m.model.policy.optimizer.state_dict()["state"][0].items()}
    m.apply(OTHER)
    ppo = m.model
    assert [g["lr"] for g in ppo.policy.optimizer.param_groups] == [OTHER["lr"]]
    assert ppo.lr_schedule(1.0) == ppo.lr_schedule(0.0) == OTHER["lr"]
    assert ppo.clip_range(1.0) == ppo.clip_range(0.0) == OTHER["clip_range"]
    assert ppo.rollout_buffer.gae_lambda == ppo.gae_lambda == OTHER["gae_lambda"]
    assert (ppo.ent_coef, ppo.n_epochs, ppo.batch_size) == (OTHER["ent_coef"], OTHER["n_epochs"], OTHER["batch_size"])
    kept = ppo.policy.optimizer.state_dict()["state"][0]
    assert all(torch.equal(kept[k], v) for k, v in adam.items()), "Adam's moments survive a change of hyperparameters"
    m.train(1)  # and the learning rate SB3 sets at each update is the new one
    assert [g["lr"] for g in ppo.policy.optimizer.param_groups] == [OTHER["lr"]]


def test_the_score_is_over_fixed_episodes_and_changes_nothing():
    m = member(HP, seed=0)
    m.train(2)
    before = through_disk(m.state_dict())
    first = m.evaluate()
    assert m.evaluate() == first
    assert same_state(m.state_dict(), before)
    assert 8 <= first["return"] <= 500 and 8 <= first["return_heldout"] <= 500  # CartPole-v1's bounds
    assert first["env_steps"] == 2 * 4 * 32
    twin = member(OTHER, seed=5)  # another member with the same weights scores the same
    twin.load_state_dict(before)
    assert twin.evaluate() == first
