"""The study's reinforcement-learning task: PPO on CartPole (workers/cartpole.toml), PBT vs random search.

The full study runs the file as it is: 8 members, 80 PPO iterations of 256 env steps (20,480 env
steps per member), ready every 8, 5 seeds per arm. --quick: 4 members, 16 iterations.
"""

from __future__ import annotations

from pbt_mq.tools.study.paired import PairedTask

CARTPOLE = PairedTask(
    name="cartpole",
    file="cartpole.toml",
    title="CartPole (PPO, stable-baselines3): PBT vs random search at equal compute",
    label="eval return",
    heldout="return_heldout",
    quick=("population.size=4", "stop.steps=16"),
    unit="PPO iterations of 256 env steps",
)
