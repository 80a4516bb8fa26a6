"""The study's reinforcement-learning task: PPO (workers/cartpole.py), PBT vs random search.

The study runs workers/cartpole.toml on Acrobot-v1 (``trainable_args.env_id``, with gamma 0.99):
on CartPole-v1 the best member of both arms reaches the maximum return, 500, within the budget
(seen on tuning seed 100), so the final scores cannot separate the arms. Acrobot-v1 (swing the
tip above a line; -500 is never, about -60 the best possible) does not saturate at this budget.
Full study: the file's sizes, 8 members, 80 PPO iterations of 256 env steps (20,480 env steps
per member), ready every 8, 5 seeds per arm. --quick: 4 members, 16 iterations.
"""

from __future__ import annotations

from pbt_mq.tools.study.analysis import Arm
from pbt_mq.tools.study.paired import ARMS, PB2, PairedTask

# issue 23: the paper's t-test for noisy RL returns, and the sub-populations that won the rising task
RL_ARMS = (*ARMS, Arm("PBT, ttest", ("exploit.rule=ttest", "exploit.window=4")),
           Arm("PBT, window+subpop+crossover", ("exploit.window=4", "exploit.subpopulations=[1, 4, 0]",
                                                "explore.rule=crossover")), PB2)

ACROBOT = ('trainable_args.env_id="Acrobot-v1"', "trainable_args.gamma=0.99")

CARTPOLE = PairedTask(
    name="cartpole",
    file="cartpole.toml",
    title="Reinforcement learning (PPO, stable-baselines3, on Acrobot-v1): PBT vs random search at equal compute",
    label="Acrobot-v1 eval return",
    heldout="return_heldout",
    full=ACROBOT,
    quick=(*ACROBOT, "population.size=4", "stop.steps=16"),
    unit="PPO iterations of 256 env steps",
    arms=RL_ARMS,
)
