"""Trainables for tests: the toy, made to fail on purpose."""

from __future__ import annotations

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
