"""The loop API: ``pbt_mq.session()`` and the ``Run`` it returns (README, "From your script to PBT").

A user keeps their own training loop in a plain function (``trainable = "train:main"``). The
function asks for its first assignment with ``pbt_mq.session()``; each ``run.report(...)``
hands in a scored state and returns the next assignment, until one comes back with ``done``.
What feeds the assignments is a ``Channel``: on a worker, the segment jobs (``worker.loop``,
one thread per call of the function); in ``pbt replay``, the recorded schedule.

Everything here checks how the function uses the API and says what is wrong in one line
(``SessionError``): the worker treats such an error as a raising ``train()`` (retries, then the
member's failure handling). Nothing here imports torch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol


class SessionError(RuntimeError):
    """The loop API was used in a way the worker cannot serve; the text says what to change."""


@dataclass(frozen=True)
class Assignment:
    """One segment of one member, as a user's function sees it."""

    experiment: str
    member: str
    seed: int  # the member's seed (core.ids.member_seed), as ``Trainable.seed``
    hparams: dict[str, Any]
    step: int  # where it starts
    state: Any  # a checkpoint to load (a cold start, an exploit, another member), or None: keep what you hold
    device: str
    metric: str  # the experiment's metric: report() must include it
    steps: int | None = None  # [ready] steps: the segment's length
    seconds: float | None = None  # [ready] seconds: its training time
    objectives: tuple[str, ...] = ()  # several metrics (multi-objective PBT): report() must include each


class Channel(Protocol):
    """Where a ``Run``'s reports go and its next assignments come from."""

    def current(self) -> Run:
        """The call's current assignment (what ``session()`` returns)."""
        ...

    def report(self, run: Run, metrics: dict[str, float], step: int, state: Any) -> Run:
        """Take the finished segment; return the next assignment (or a done run)."""
        ...

    def broken(self, exc: SessionError) -> None:
        """The function misused the API: fail the segment with ``exc``."""
        ...


class Run:
    """One assignment of a ``main()`` call, or (``done``) the end of the call.

    ``report()`` returns the next ``Run``; this one is then spent. After ``report()``, ``state``
    None means "keep what you hold" (the same member continues on this worker).
    """

    def __init__(self, channel: Channel, assignment: Assignment, done: bool = False) -> None:
        self._channel = channel
        self._a = assignment if not done else replace(assignment, state=None)
        self._done = done
        self._handed = time.monotonic()  # the assignment reached the function
        self._began: float | None = None  # its first should_report(): training started (setup is done)
        self._stopped: float | None = None  # the first should_report() that said true
        self._spent = False

    def __repr__(self) -> str:
        a = self._a
        what = "done" if self._done else f"step {a.step}, hparams {a.hparams}, state {'set' if a.state is not None else 'None'}"
        return f"Run({a.experiment}/{a.member}: {what})"

    @property
    def done(self) -> bool:
        """True: return from the function; the worker calls it again for its next assignment."""
        return self._done

    @property
    def state(self) -> Any:
        """A checkpoint to load (cold start, exploit, another member), or None: keep what you hold."""
        return self._a.state

    @property
    def step(self) -> int:
        """The step this assignment starts from."""
        return self._a.step

    @property
    def member(self) -> str:
        return self._a.member

    @property
    def seed(self) -> int:
        """The member's seed: the one ``Trainable.seed`` gets (seed your model and data with it)."""
        return self._a.seed

    @property
    def device(self) -> str:
        """The worker's ``--device``; ``state`` tensors are loaded there."""
        return self._a.device

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self._a.hparams)

    @property
    def experiment(self) -> str:
        return self._a.experiment

    def should_report(self, step: int) -> bool:
        """True once ``step - self.step`` reaches the segment's length ([ready] steps), or its
        seconds have passed since this run's first ``should_report()`` ([ready] seconds, and at
        least one step). Its first call also marks where the segment's training time begins."""
        now = time.monotonic()
        if self._began is None:
            self._began = now
        due = self._due(step, now)
        if due and self._stopped is None:
            self._stopped = now
        return due

    def _due(self, step: int, now: float) -> bool:
        if self._done:
            return True
        if self._a.steps is not None:
            return step - self._a.step >= self._a.steps
        began = self._handed if self._began is None else self._began
        return step > self._a.step and now - began >= float(self._a.seconds or 0.0)

    def trained_s(self, now: float) -> tuple[float, float]:
        """The segment's training seconds (``train_s``), and the seconds after it until ``now``:
        from the first ``should_report()`` (without one: from when the assignment was handed over)
        to the first that said true (without one: ``now``). Setup before the loop (building the
        model, loading ``state``) and evaluation after it are not training, as for a Trainable."""
        began = self._handed if self._began is None else self._began
        stopped = now if self._stopped is None else max(self._stopped, began)
        return max(0.0, stopped - began), max(0.0, now - stopped)

    def report(self, metrics: Mapping[str, Any], step: int, state: Any) -> Run:
        """Save ``state`` (serialized before this returns) and publish ``metrics`` at ``step``;
        return the next assignment. Use the returned ``Run``: this one is spent."""
        if self._done:
            raise SessionError("report() after run.done: the function must return once a report() gives a done run")
        try:
            clean = self._check(metrics, step, state)
        except SessionError as exc:
            self._channel.broken(exc)
            raise
        self._spent = True
        return self._channel.report(self, clean, step, state)

    def _check(self, metrics: Mapping[str, Any], step: int, state: Any) -> dict[str, float]:
        a = self._a
        if self._spent:
            raise SessionError("report() on a run that was already reported: use the Run that report() returned"
                               " (run = run.report(...))")
        if isinstance(step, bool) or not isinstance(step, int):
            raise SessionError(f"report(step=...): expected an integer step, got {type(step).__name__}")
        if a.steps is not None and step != a.step + a.steps:
            raise SessionError(f"report(step={step}): this segment runs steps {a.step}-{a.step + a.steps} ([ready] steps"
                               f" = {a.steps}); report at step {a.step + a.steps}, when run.should_report(step) turns true")
        if a.steps is None and not self._due(step, time.monotonic()):
            raise SessionError(f"report(step={step}) before the segment's end: it started at step {a.step} and lasts"
                               f" {a.seconds} s ([ready] seconds); report when run.should_report(step) turns true")
        if state is None:
            raise SessionError("report(state=None): pass the state to checkpoint (model, optimizer, RNG...)")
        if not isinstance(metrics, Mapping):
            raise SessionError(f"report(metrics): expected a dict of metric name -> number, got {type(metrics).__name__}")
        missing = [m for m in (a.metric, *a.objectives) if m not in metrics]
        if missing:
            raise SessionError(f"report(metrics): got {sorted(map(str, metrics))}, but the experiment's metric is"
                               f" {missing[0]!r}")
        clean = {}
        for k, v in metrics.items():
            try:
                clean[str(k)] = float(v)
            except (TypeError, ValueError):
                raise SessionError(f"report(metrics): {k!r} is {type(v).__name__}, not a number") from None
        return clean  # NaN or inf is a score too: the member ranks last


# ---------------------------------------------------------------- the current call


class _Current(threading.local):
    channel: Any = None


_current = _Current()


class Bound:
    """Bind a channel to this thread for one call of the user's function (``with Bound(ch): fn()``)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def __enter__(self) -> Any:
        self.saved, _current.channel = _current.channel, self.channel
        return self.channel

    def __exit__(self, *exc: Any) -> None:
        _current.channel = self.saved


def session() -> Run:
    """The current assignment of this call of your function: the first one, or (called again)
    the latest. Only a function that ``pbt-worker`` (or ``pbt replay``) calls has one."""
    channel = _current.channel
    if channel is None:
        raise SessionError("pbt_mq.session() outside a worker: it belongs in the function an experiment file names"
                           " (trainable = \"module:function\"), called by pbt-worker or pbt replay, in that thread")
    return channel.current()
