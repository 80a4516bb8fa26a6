"""The trainable ``pbt bench --fleet`` runs: a state of a chosen size and training that only waits.

Its "training" is a sleep, so the time a worker spends outside it is pbt-mq's alone:
checkpoint save and upload, download on exploit, claiming, publishing, waiting for the
arbiter. The score rises with the step and peaks at x = 0.7, so exploits happen.
"""

from __future__ import annotations

import time

from pbt_mq.worker.trainable import Trainable


class BenchModel(Trainable):
    def setup(self, model_mb: float = 50.0, step_s: float = 0.5) -> None:
        import torch  # optional: the bench runs this trainable on workers, which have torch

        self.step_s = step_s
        self.w = torch.zeros(max(1, int(model_mb * 1e6 / 4)), dtype=torch.float32)
        self.step = 0

    def train(self, steps: int) -> None:
        time.sleep(steps * self.step_s)
        self.step += steps

    def evaluate(self) -> dict[str, float]:
        return {"score": self.step - 10.0 * (float(self.hparams["x"]) - 0.7) ** 2}

    def state_dict(self) -> dict:
        return {"w": self.w, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.w = state["w"]
        self.step = int(state["step"])
