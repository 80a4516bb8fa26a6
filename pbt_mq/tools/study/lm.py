"""The study's language-model task: a character transformer (workers/charlm.toml), PBT vs random search.

The full study runs the file as it is (see its header for the sizes), 5 seeds per arm. --quick:
4 members, 40 steps.
"""

from __future__ import annotations

from pbt_mq.tools.study.analysis import Arm
from pbt_mq.tools.study.paired import ARMS, PB2, PairedTask

LM_ARMS = (*ARMS, Arm("PBT, window+subpop+crossover", ("exploit.window=4", "exploit.subpopulations=[1, 4, 0]",
                                                      "explore.rule=crossover")), PB2)

CHARLM = PairedTask(
    name="charlm",
    file="charlm.toml",
    title="Character language model (a small transformer): PBT vs random search at equal compute",
    label="validation loss",
    heldout="test_loss",
    quick=("population.size=4", "stop.steps=40", "ready.steps=20"),
    arms=LM_ARMS,
)
