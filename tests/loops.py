"""Training functions for the loop API's tests (``pbt_mq.session``): the issue's shape, and misuses.

``toy`` is the PBT paper's toy (workers/toy.py) written as a plain loop with a torch module and
optimizer: θ is a parameter, SGD on h0·θ0² + h1·θ1² is the toy's gradient ascent on Q̂. Each
assignment it is given, and each return, is appended as a JSON line to ``log`` (when set), so a
test can see exactly what the function saw.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time

import torch

import pbt_mq


def note(log: str, **fields) -> None:
    if log:
        line = json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n"
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def toy(log: str = "", step_size: float = 0.05, delay_s: float = 0.0, misuse: str | dict = "",
        setup_s: float = 0.0) -> None:
    """``misuse``: one way to misuse the API for every member, or {member: way}; ``setup_s``: a slow
    model construction before the first segment's loop."""
    call = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    run = pbt_mq.session()
    time.sleep(setup_s)
    torch.manual_seed(run.seed)
    model = torch.nn.Linear(2, 1, bias=False, dtype=torch.float64).to(run.device)
    with torch.no_grad():
        model.weight.fill_(0.9)  # θ = [0.9, 0.9]
    opt = torch.optim.SGD(model.parameters(), lr=step_size)
    stamp = torch.zeros(1, dtype=torch.int64)  # changed after each report: the checkpoint must not see it
    while not run.done:
        if run.state is not None:  # a checkpoint to load: a cold start or an exploit
            model.load_state_dict(run.state["model"])
            opt.load_state_dict(run.state["opt"])
        for g in opt.param_groups:
            g["lr"] = step_size
        h = torch.tensor([run.hparams["h0"], run.hparams["h1"]], dtype=torch.float64)
        note(log, call=call, member=run.member, seed=run.seed, device=run.device, step=run.step,
             hparams=run.hparams, state=None if run.state is None else run.state["owner"])
        way = misuse.get(run.member, "") if isinstance(misuse, dict) else misuse
        if way == "return-early" and run.step > 0:
            return
        step = run.step
        while not run.should_report(step):
            loss = (h * model.weight[0] ** 2).sum()  # -Q̂ + 1.2
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if delay_s:
                time.sleep(delay_s)
        q = 1.2 - float((model.weight.detach() ** 2).sum())
        metrics = {"q": q} if way != "no-metric" else {"score": q}
        stamp.fill_(step)
        state = {"model": model.state_dict(), "opt": opt.state_dict(), "stamp": stamp,
                 "owner": {"member": run.member, "step": step}}
        reported = step + 1 if way == "wrong-step" else step
        run = run.report(metrics, step=reported, state=state)
        stamp.fill_(-1)  # report() serialized the state before it returned
    note(log, call=call, done=True)
    if misuse == "report-after-done":
        run.report({"q": 0.0}, step=0, state={})


def sleeper(seconds: float = 30.0, **_: object) -> None:
    """Never reports in time: its segment times out."""
    run = pbt_mq.session()
    time.sleep(seconds)
    run.report({"q": 0.0}, step=run.step + 1, state={"x": torch.zeros(1)})


_overruns = itertools.count()  # calls of overrun() in this worker process


def overrun(log: str = "", first_s: float = 5.0, step_s: float = 0.5, **_: object) -> None:
    """The first call overruns its segment (timed out, abandoned), then reports anyway; later calls
    report every ``step_s`` s, q = 1. What the late report got is noted in ``log``."""
    first = next(_overruns) == 0
    run = pbt_mq.session()
    if first:
        time.sleep(first_s)
        try:
            run.report({"q": -1.0}, step=run.step + 4, state={"x": torch.zeros(1)})
            note(log, late="accepted")
        except pbt_mq.SessionError as exc:
            note(log, late="refused", error=str(exc))
        return
    while not run.done:
        time.sleep(step_s)
        run = run.report({"q": 1.0}, step=run.step + 4, state={"x": torch.ones(1)})


def by_time(log: str = "", **_: object) -> None:
    """[ready] seconds: report when should_report says so; a step is 5 ms."""
    run = pbt_mq.session()
    x = torch.zeros(1)
    while not run.done:
        if run.state is not None:
            x = run.state["x"].clone()
        t0, step = time.monotonic(), run.step
        while not run.should_report(step):
            time.sleep(0.005)
            x += 1
            step += 1
        note(log, member=run.member, start=run.step, step=step, elapsed=time.monotonic() - t0)
        run = run.report({"q": float(x)}, step=step, state={"x": x})
