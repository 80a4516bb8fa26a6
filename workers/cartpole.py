"""Reinforcement learning: PPO from stable-baselines3 on a gymnasium classic-control task.

Tunes learning rate, entropy coefficient, clip range and GAE lambda, plus the number of epochs
and the minibatch size, all applied in place between segments: SB3 keeps the learning rate and
the clip range as schedules, so they become constant schedules of the new values; the rollout
buffer keeps its own copy of GAE lambda, so it is set there too. One step is one PPO iteration:
``n_envs x n_steps`` environment steps collected, then ``n_epochs`` passes of minibatch updates.

Score ``return``: the mean return of the deterministic (argmax) policy over ``eval_episodes``
episodes with fixed seeds, the same for every member and every evaluation. ``return_heldout``
is the same over as many other fixed seeds, never selected on: the gap between the two shows
how much of a lead is selection on the evaluation episodes.

The checkpoint holds everything PPO needs to continue exactly, as plain tensors and data
(``torch.load(weights_only=True)``): the policy's and the Adam optimizer's state dicts, SB3's
counters, the vectorized environment (the last observation, episode starts, each sub-env's
physical state, time-limit counter and ``np_random``), and the states of the three global RNGs
PPO draws from (torch: actions; numpy: minibatch order; Python's random, seeded with them).
Those globals are shared by every member a worker process trains, so each trainable keeps its
own copies and swaps them in only while it trains. SB3's ``save``/``load`` use cloudpickle and
are not used. Everything that touches SB3 or gymnasium internals is in the adapter functions at
the top of this file (checked by tests/workers/test_cartpole.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import ConstantSchedule
from stable_baselines3.common.vec_env import DummyVecEnv

from pbt_mq import Trainable

EVAL_SEED = 10_000  # episode i of the evaluation resets with seed EVAL_SEED + i, for every member
HELDOUT_SEED = 20_000
ENV_FIELDS = ("state", "steps_beyond_terminated", "last_u")  # the classic-control envs' dynamic state
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining")


# ---------------------------------------------------------------- adapter: plain data <-> numpy, gymnasium, SB3


def plain(v: Any) -> Any:
    """numpy values as tensors (dtype kept), everything else as is."""
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v.copy())
    if isinstance(v, np.generic):
        return torch.from_numpy(np.array(v))
    return v


def unplain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        a = v.numpy().copy()
        return a[()] if a.ndim == 0 else a
    return v


def make_env(env_id: str) -> gym.Env:
    """The bare environment under its time limit: no order or API checker wrappers, whose only
    state is bookkeeping for warnings."""
    return gym.wrappers.TimeLimit(gym.make(env_id).unwrapped, gym.spec(env_id).max_episode_steps)


def env_state(env: gym.Env) -> dict[str, Any]:
    inner = env.unwrapped
    return {"elapsed": env._elapsed_steps,
            "fields": {k: plain(getattr(inner, k)) for k in ENV_FIELDS if hasattr(inner, k)},
            "np_random": json.dumps(inner.np_random.bit_generator.state)}  # 128-bit ints: exact in JSON


def set_env_state(env: gym.Env, s: dict[str, Any]) -> None:
    inner = env.unwrapped
    env._elapsed_steps = s["elapsed"]
    for k, v in s["fields"].items():
        setattr(inner, k, unplain(v))
    inner.np_random.bit_generator.state = json.loads(s["np_random"])


def rng_state() -> dict[str, Any]:
    """The global RNGs PPO draws from, as plain data."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)},
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss_next}}


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))


def ppo_state(model: PPO) -> dict[str, Any]:
    venv = model.env
    return {"policy": model.policy.state_dict(), "optimizer": model.policy.optimizer.state_dict(),
            "counters": {k: getattr(model, k) for k in COUNTERS},
            "last_obs": plain(model._last_obs), "episode_starts": plain(model._last_episode_starts),
            "envs": [env_state(e) for e in venv.envs]}


def set_ppo_state(model: PPO, s: dict[str, Any]) -> None:
    model.policy.load_state_dict(s["policy"])
    model.policy.optimizer.load_state_dict(s["optimizer"])
    for k, v in s["counters"].items():
        setattr(model, k, v)
    model._last_obs = unplain(s["last_obs"])
    model._last_episode_starts = unplain(s["episode_starts"])
    for env, es in zip(model.env.envs, s["envs"], strict=True):
        set_env_state(env, es)


def set_ppo_hparams(model: PPO, hp: dict[str, Any]) -> None:
    """In place: SB3 reads lr and clip range through schedules, GAE lambda from the buffer's copy."""
    lr = float(hp["lr"])
    model.learning_rate = lr
    model.lr_schedule = ConstantSchedule(lr)
    for g in model.policy.optimizer.param_groups:
        g["lr"] = lr
    model.clip_range = ConstantSchedule(float(hp["clip_range"]))
    model.ent_coef = float(hp["ent_coef"])
    model.gae_lambda = model.rollout_buffer.gae_lambda = float(hp["gae_lambda"])
    model.n_epochs = int(hp["n_epochs"])
    model.batch_size = int(hp["batch_size"])


# ---------------------------------------------------------------- the trainable


class CartPole(Trainable):
    def setup(self, env_id: str = "CartPole-v1", n_envs: int = 8, n_steps: int = 32, gamma: float = 0.98,
              hidden: int = 64, eval_episodes: int = 10) -> None:
        hp = self.hparams
        venv = DummyVecEnv([lambda: make_env(env_id) for _ in range(n_envs)])
        self.model = PPO("MlpPolicy", venv, learning_rate=float(hp["lr"]), n_steps=n_steps,
                         batch_size=int(hp["batch_size"]), n_epochs=int(hp["n_epochs"]), gamma=gamma,
                         gae_lambda=float(hp["gae_lambda"]), clip_range=float(hp["clip_range"]),
                         ent_coef=float(hp["ent_coef"]), policy_kwargs={"net_arch": [hidden, hidden]},
                         seed=self.seed, device=self.device)  # seeds torch, numpy, random and the envs
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # no stdout, no files
        self.model._last_obs = venv.reset()
        self.model._last_episode_starts = np.ones((n_envs,), dtype=bool)
        self.per_step = n_envs * n_steps
        self.eval_envs = [make_env(env_id) for _ in range(2 * eval_episodes)]
        self.rngs = rng_state()
        self.apply(hp)

    @contextmanager
    def own_rngs(self, keep: bool) -> Iterator[None]:
        """Swap this member's RNG states into the process-wide generators, and back out."""
        outer = rng_state()
        set_rng_state(self.rngs)
        try:
            yield
        finally:
            if keep:
                self.rngs = rng_state()
            set_rng_state(outer)

    def apply(self, hparams: dict[str, Any]) -> None:
        self.hparams = dict(hparams)
        set_ppo_hparams(self.model, hparams)

    def train(self, steps: int) -> None:
        with self.own_rngs(keep=True):
            self.model.learn(steps * self.per_step, reset_num_timesteps=False, log_interval=None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        n = len(self.eval_envs) // 2
        seeds = [EVAL_SEED + i for i in range(n)] + [HELDOUT_SEED + i for i in range(n)]
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(self.eval_envs, seeds, strict=True)])
        returns = np.zeros(len(seeds))
        running = np.ones(len(seeds), dtype=bool)
        policy = self.model.policy
        policy.set_training_mode(False)
        with self.own_rngs(keep=False):  # the distribution's mode draws nothing; this makes sure of it
            while running.any():
                idx = np.flatnonzero(running)
                actions = policy.get_distribution(torch.as_tensor(obs[idx])).mode().numpy()
                for i, a in zip(idx, actions, strict=True):
                    obs[i], reward, terminated, truncated, _ = self.eval_envs[i].step(a)
                    returns[i] += reward
                    running[i] = not (terminated or truncated)
        return {"return": float(returns[:n].mean()), "return_heldout": float(returns[n:].mean()),
                "env_steps": float(self.model.num_timesteps)}

    def state_dict(self) -> dict[str, Any]:
        return {"ppo": ppo_state(self.model), "rng": self.rngs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_ppo_state(self.model, state["ppo"])
        self.rngs = state["rng"]
