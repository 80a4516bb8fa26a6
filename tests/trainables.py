"""Trainables for tests: the toy, made to fail on purpose."""

from __future__ import annotations

import os
import random
import signal

import torch

from workers.toy import Toy


class FailsWhenH0High(Toy):
    """Raises in train() whenever h0 > 0.9, so the member that starts at h0 = 1 fails."""

    def train(self, steps: int) -> None:
        if self.hparams["h0"] > 0.9:
            raise RuntimeError(f"boom: h0={self.hparams['h0']}")
        super().train(steps)


class Constructions(Toy):
    """Counts constructions per process, to prove the worker reuses its live model."""

    built = 0

    def setup(self, **args) -> None:
        type(self).built += 1
        super().setup(**args)


class TooManyMetrics(Toy):
    """evaluate() returns more metrics than an event may carry: the segment must fail, not strand."""

    def evaluate(self) -> dict[str, float]:
        return {"q": super().evaluate()["q"], **{f"class_{i}": 0.5 for i in range(300)}}


def _first_segment_of_the_paper_member(t: Toy) -> bool:
    """The member that starts at h = [1, 0] (PAPER_INIT_4's m000), on its very first segment."""
    return t.segments == 0 and t.hparams["h0"] == 1.0 and t.hparams["h1"] == 0.0


class Flaky(Toy):
    """Raises on m000's first segment, every time, and later on 1 segment in 10 at random."""

    rng = random.Random(os.getpid())  # per worker process: a retry may succeed

    def train(self, steps: int) -> None:
        if _first_segment_of_the_paper_member(self):
            raise RuntimeError("boom: the first segment of the member at h = [1, 0]")
        if self.rng.random() < 0.1:
            raise RuntimeError("flaky: a random failure")
        super().train(steps)


class FailsFirst(Toy):
    """Raises on m000's first segment, every time, and nowhere else: with ``worker.max_retries=0`` the
    member is replaced exactly once."""

    def train(self, steps: int) -> None:
        if _first_segment_of_the_paper_member(self):
            raise RuntimeError("boom: the first segment of the member at h = [1, 0]")
        super().train(steps)


class AlwaysRaises(Toy):
    def train(self, steps: int) -> None:
        raise ValueError("this trainable is broken")


class KillsItsWorker(Toy):
    """m000's first segment kills the worker process running it (SIGKILL: no goodbye)."""

    def train(self, steps: int) -> None:
        if _first_segment_of_the_paper_member(self):
            os.kill(os.getpid(), signal.SIGKILL)
        super().train(steps)


class Padded(Toy):
    """The toy with ``pad_kb`` KB of extra state in every checkpoint (a model of some size)."""

    def setup(self, pad_kb: int = 24, **args) -> None:
        super().setup(**args)
        self.pad = torch.zeros(pad_kb * 256, dtype=torch.float32)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pad": self.pad.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pad = state["pad"].clone()
