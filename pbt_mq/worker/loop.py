"""A user's training function, as the segment runtime sees a trainable: one call per thread.

The loop API (``worker.session``) lets the function keep control across segments, while the
worker keeps running RQ and the segment runtime in its main thread exactly as for a class: each
segment is still one RQ job, claimed by claim_segment.lua, timed out by RQ, published in one
transaction. ``FunctionTrainable`` stands in for the trainable: ``segment()`` hands the
assignment to the function's thread and waits for its ``report()``, whose metrics and state are
what ``evaluate()`` and ``state_dict()`` then return. The function's thread waits inside
``report()`` for its next assignment: a warm continuation (the same member, ``state`` None), a
checkpoint loaded through ``load_state_dict`` (an exploit, another member of the experiment),
or the end of the call (``done``) when ``Calls`` sees that the next work is a fresh start,
another experiment, or the worker stopping.

A worker keeps at most one call alive (it holds a model, maybe a GPU's worth). An error of the
function (it raised, misused the API, returned early) fails the segment it happened in, like a
raising ``train()``; an error after ``done`` fails the experiment's next segment on this worker.

A Python thread cannot be killed: a call whose segment timed out (or that did not return after
``done``) is *abandoned*, said in one warning line. Its thread runs on until it next reports,
which raises; a reply is taken only for the assignment the worker is waiting on (the segment's
generation), so it never lands in a later segment, which gets a new call. The worker does not
exit over it: nothing restarts an exited worker under ``pbt local`` or SLURM.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pbt_mq.core.ids import member_seed
from pbt_mq.core.protocol import SegmentCommand
from pbt_mq.worker.session import Assignment, Bound, Run, SessionError

log = logging.getLogger(__name__)
END = object()  # what report() receives when the call's work is over
JOIN_S = 60.0  # how long the worker waits for a function to return after run.done


def is_function(obj: Any) -> bool:
    """An experiment's ``trainable`` names a function (the loop API) rather than a Trainable class."""
    return callable(obj) and not inspect.isclass(obj)


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` before a call starts, as before a Trainable is constructed."""
    try:
        import torch  # a worker's dependency; this module must import without it (``import pbt_mq``)
    except ImportError:  # pragma: no cover
        return
    torch.manual_seed(seed)


class FunctionTrainable:
    """One call of the user's function, fed segment by segment from the worker's main thread."""

    def __init__(self, fn: Callable[..., Any], experiment: str, exp_seed: int, metric: str | tuple[str, ...], device: str,
                 args: dict[str, Any]) -> None:
        names = (metric,) if isinstance(metric, str) else tuple(metric)  # several: multi-objective, the first leads
        self.fn, self.experiment, self.exp_seed, self.metric, self.objectives = fn, experiment, exp_seed, names[0], names
        self.device, self.args = device, dict(args)
        self.name = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}"
        self.member = ""  # the member of the latest segment
        self.seed: int | None = None  # run.seed: a replacement's own (kept for the call), else the member's
        self.train_s = self.after_s = 0.0  # the latest segment's training seconds, and after it (evaluation)
        self.hparams: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}
        self.state: Any = None
        self.thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._pending: Any = None  # a loaded checkpoint for the next assignment
        self._next: Any = None  # the next Assignment (or END) for the function's thread
        self._given: Assignment | None = None  # the segment's assignment: only its report is a reply
        self._reply: tuple[str, Any] | None = None  # the function's answer to a segment
        self._waiting = False  # a segment waits for a reply
        self._run: Run | None = None
        self._outcome: tuple[str, Any] | None = None  # how the call ended: returned | error
        self._charged = False  # the outcome already failed a segment
        self._broken = self._abandoned = self._ended = False

    @property
    def alive(self) -> bool:
        """It can take another assignment."""
        return not (self._outcome or self._broken or self._abandoned or self._ended)

    # ------------------------------------------------------------ the runtime's side

    def apply(self, hparams: dict[str, Any]) -> None:
        self.hparams = dict(hparams)

    def load_state_dict(self, state: Any) -> None:
        self._pending = state  # handed to the function as run.state

    def evaluate(self) -> dict[str, float]:
        return dict(self.metrics)

    def state_dict(self) -> Any:
        return self.state

    def segment(self, cmd: SegmentCommand, start: int) -> int:
        """Run one segment from ``start`` in the function; the step it reported."""
        if cmd.seed is not None or self.seed is None or cmd.member != self.member:
            self.seed = member_seed(self.exp_seed, cmd.member) if cmd.seed is None else cmd.seed
        a = Assignment(
            experiment=self.experiment, member=cmd.member, seed=self.seed,
            hparams=dict(self.hparams), step=start, state=self._pending, device=self.device, metric=self.metric,
            objectives=self.objectives[1:],
            steps=None if cmd.until_step is None else cmd.until_step - cmd.step, seconds=cmd.seconds,
        )
        self._pending, self.metrics, self.state = None, {}, None
        self.member, self.train_s, self.after_s = cmd.member, 0.0, 0.0
        with self._cond:
            if not self.alive:
                raise SessionError(f"{self.name}: this call cannot take another segment")
            self._reply, self._next, self._given, self._waiting = None, a, a, True
            self._cond.notify_all()
        if self.thread is None:
            self.thread = threading.Thread(target=self._main, args=(a.seed,), name=f"pbt-call-{cmd.member}",
                                           daemon=True)
            self.thread.start()
        try:
            kind, payload = self._await_reply()
        except BaseException as exc:  # RQ's timeout or a forced stop: this call can never be resumed
            self._abandon()
            log.warning("%s %s seq=%d: %s while %s trained it; its thread is abandoned: it runs on (holding its"
                        " memory, maybe a GPU's) until its next run.report(), which raises and reaches no later"
                        " segment; restart this worker to free it now", self.experiment, cmd.member, cmd.seq,
                        type(exc).__name__, self.name)
            raise
        if kind == "report":
            self.metrics, step, self.state, self.train_s, self.after_s = payload
            return step
        self._charged = True
        if kind == "error":
            raise payload
        raise SessionError(f"{self.name} returned while run.done was false: keep calling run.report(...) until it"
                           " returns a run with done = True, then return")

    def _await_reply(self) -> tuple[str, Any]:
        with self._cond:
            while self._reply is None:
                self._cond.wait(1.0)  # short waits: RQ's timeout signal is handled between them
            reply, self._reply, self._waiting = self._reply, None, False
            return reply

    def _abandon(self) -> None:
        with self._cond:
            self._abandoned = True
            self._given, self._waiting = None, False
            self._cond.notify_all()

    def end(self, join_s: float = JOIN_S) -> BaseException | None:
        """Over: report() returns a done run. Waits for the function to return; its error, if no
        segment was failed with it already."""
        with self._cond:
            self._ended = True
            self._next = END
            self._cond.notify_all()
        if self.thread is None or self._abandoned:
            return None
        self.thread.join(join_s)
        if self.thread.is_alive():
            self._abandon()
            log.warning("%s %s: %s did not return within %.0f s after its run was done; its thread is abandoned:"
                        " it runs on until its next run.report(), which raises; restart this worker to free it now",
                        self.experiment, self.member, self.name, join_s)
            return SessionError(f"{self.name} did not return within {join_s:.0f} s after its run was done")
        if self._outcome and self._outcome[0] == "error" and not self._charged:
            self._charged = True
            return self._outcome[1]
        return None

    # ------------------------------------------------------------ the function's side

    def _main(self, seed: int) -> None:
        seed_torch(seed)
        with Bound(self):
            try:
                self.fn(**self.args)
                outcome: tuple[str, Any] = ("returned", None)
            except BaseException as exc:  # the segment it belongs to fails with it, as a raising train()
                outcome = ("error", exc)
        with self._cond:
            self._outcome = outcome
            if self._waiting and self._reply is None:
                self._reply = outcome
            self._cond.notify_all()

    def current(self) -> Run:
        with self._cond:
            if self._run is None:
                while self._next is None:
                    self._cond.wait()
                self._run = Run(self, self._take())
            return self._run

    def _take(self) -> Assignment:
        a, self._next = self._next, None
        if a is END or a is None:
            raise SessionError("no assignment")  # never: a call starts with one
        return a

    def report(self, run: Run, metrics: dict[str, float], step: int, state: Any) -> Run:
        train_s, after_s = run.trained_s(time.monotonic())
        with self._cond:
            if self._abandoned or self._broken:
                raise SessionError(f"{self.name}: this call was abandoned (its segment timed out, failed or the worker"
                                   " stopped); return from the function")
            if not self._waiting or run._a is not self._given:  # never a reply to another segment than its own
                raise SessionError(f"{self.name}: report() for an assignment the worker no longer waits for;"
                                   " return from the function")
            self._reply = ("report", (metrics, step, state, train_s, after_s))
            self._cond.notify_all()
            while self._next is None and not self._abandoned:
                self._cond.wait()
            if self._abandoned:
                raise SessionError(f"{self.name}: this call was abandoned while it waited for its next assignment")
            if self._next is END:
                self._run = Run(self, run._a, done=True)
            else:
                self._run = Run(self, self._take())
            return self._run

    def broken(self, exc: SessionError) -> None:
        with self._cond:
            self._broken = True
            if self._waiting and self._reply is None:
                self._reply = ("error", exc)
            self._cond.notify_all()


def user_frame(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame outside pbt-mq (the user's code), else of the innermost."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    ours = str(Path(__file__).resolve().parent.parent)
    theirs = [f for f in frames if not str(Path(f.filename).resolve()).startswith(ours)]
    frame = (theirs or frames or [None])[-1]
    return f" at {frame.filename}:{frame.lineno}" if frame is not None else ""


class Calls:
    """The call of a user's function this worker keeps (at most one)."""

    def __init__(self, device: str, join_s: float = JOIN_S) -> None:
        self.device = device
        self.join_s = join_s
        self.active: FunctionTrainable | None = None
        self.misuse: list[tuple[str, str, str]] = []  # (experiment, member, what its call did after its run was done)

    def start(self, fn: Callable[..., Any], experiment: str, exp_seed: int, metric: str | tuple[str, ...], args: dict[str, Any],
              cmd: SegmentCommand) -> FunctionTrainable:
        """A new call for ``cmd`` (a fresh start, or no live call to continue): the previous one is over."""
        self._finish(cmd)
        self.active = FunctionTrainable(fn, experiment, exp_seed, metric, self.device, args)
        return self.active

    def reassign(self, cmd: SegmentCommand) -> None:
        """Before any segment: end the live call unless ``cmd`` continues its experiment's work."""
        a = self.active
        if a is not None and not (a.alive and cmd.experiment == a.experiment and cmd.start is not None):
            self._finish(cmd)

    def usable(self, trainable: Any) -> bool:
        return not isinstance(trainable, FunctionTrainable) or (trainable is self.active and trainable.alive)

    def _finish(self, cmd: SegmentCommand) -> None:
        """End the live call. An error it ended with is charged to the member whose call it was
        (``misuse``, written to that member by the worker), never to ``cmd``, whose segment starts a new call."""
        a, self.active = self.active, None
        if a is None:
            return
        err = a.end(self.join_s)
        if err is None:
            return
        text = f"its call of {a.name} failed after its run was done: {type(err).__name__}: {err}{user_frame(err)}"
        log.error("%s %s: %s", a.experiment, a.member or "?", text)
        self.misuse.append((a.experiment, a.member, text))

    def close(self) -> None:
        """The worker stops: the live call's report() returns done, and it gets a while to return."""
        a, self.active = self.active, None
        if a is not None:
            err = a.end(self.join_s)
            if err is not None:
                log.error("%s (%s): %s: %s", a.name, a.experiment, type(err).__name__, err)
