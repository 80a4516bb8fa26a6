"""``pbt local``: the embedded single-machine default, and a place to come back to.

Starts a private ``redis-server`` keeping its state in the work dir (``tools.workdir``), one
``pbt-arbiter`` and N ``pbt-worker`` processes (``tools.fleet``), launches the experiment, shows
it live, prints the best member and its hyperparameter schedule, writes ``DIR/EXP/report.png``
and ``DIR/EXP/best/`` (``tools.report``), and stops everything it started, also on Ctrl-C.

An experiment it could not finish (Ctrl-C, a timeout, ``kill -9``, a reboot) stays in the work
dir, paused: ``pbt local --resume`` continues it (``tools.resume``). A new ``pbt local FILE`` in
that dir pauses it explicitly (so the new run's workers skip its queued segments) and says so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.live import Live
from rich.text import Text

from pbt_mq.broker.connect import connect
from pbt_mq.config.parse import load_file
from pbt_mq.core import settings
from pbt_mq.core.model import ExperimentState
from pbt_mq.core.terminal import escape_controls
from pbt_mq.observe.stats import experiment_stats, format_stats
from pbt_mq.observe.status import format_status
from pbt_mq.state.experiment import launch, pause, status, unpause
from pbt_mq.store.open import open_store
from pbt_mq.tools.fleet import daemons, import_root, on_pythonpath
from pbt_mq.tools.report import outputs, summary
from pbt_mq.tools.resume import forget_dead_fleet, recover, unfinished
from pbt_mq.tools.workdir import WorkDirError, has_state, relocate, serve_in_place, shown

ALL = ""  # --resume without an experiment id: every unfinished one
RESUME_HINT = "pbt local --resume continues it"  # in the paused reason, which any reader shows


def run_local(
    file: str | None,
    workers: int = 2,
    overrides: Sequence[str] = (),
    workdir: str = ".pbt-local",
    timeout_s: float | None = None,
    live: bool = True,
    resume: str | None = None,
) -> int:
    """Run ``file`` in ``workdir``, or with ``resume`` (an experiment id, or ALL) continue what is unfinished there."""
    cfg = load_file(file, list(overrides)) if file else None  # a broken file fails before anything starts
    if cfg is not None:  # its workers find the trainable in the file's project, whatever the current directory
        on_pythonpath(import_root(Path(file), cfg.trainable))
    wd = Path(workdir).resolve()
    if cfg is None and not has_state(wd):
        raise WorkDirError(f"nothing to resume: {shown(wd)} holds no saved pbt local state (see --dir)")
    (wd / "logs").mkdir(parents=True, exist_ok=True)
    store_url = f"file://{wd / 'checkpoints'}"
    open_store(store_url).check()
    t0 = time.monotonic()
    resume_cmd = f"pbt local --resume --dir {shown(wd)}"
    with serve_in_place(wd) as url:
        r = connect(url)
        forget_dead_fleet(r)
        relocate(r, wd)
        older = unfinished(r)
        if cfg is not None:
            exps = [launch(r, cfg, store_url)]
            print(f"pbt local: {exps[0]}: population {cfg.population} on {workers} workers; logs in {shown(wd / 'logs')}")
        else:
            exps = [e for e in older if resume in (ALL, e)]
            if not exps:
                if resume:
                    raise WorkDirError(f"{resume}: not an unfinished experiment in {shown(wd)} (see: pbt list --local {shown(wd)})")
                print(f"pbt local: nothing to resume in {shown(wd)}: every experiment there has ended (pbt list --local {shown(wd)})")
                return 0
        waiting = [e for e in older if e not in exps]
        for e in waiting:
            pause(r, e, f"another experiment runs in this work dir ({RESUME_HINT})")
        if waiting:
            print(f"pbt local: {_names(waiting)} unfinished here: paused; resume with `{resume_cmd}`")
        for e in exps if cfg is None else ():
            unpause(r, e)
            got = recover(r, e)
            n = got["requeued"]
            redo = (f"{n} segment{'s' * (n != 1)} in flight queued again from {'their' if n != 1 else 'its'}"
                    " start checkpoint") if n else "no segment was in flight"
            print(f"pbt local: resuming {e}: {_progress(r, e)}; {redo}; logs in {shown(wd / 'logs')}")
        finals = _run(r, url, wd, workers, exps, t0, timeout_s, live, resume_cmd)
        for e in exps:
            st = finals[e]
            print(summary(r, e, st, time.monotonic() - t0))
            print(format_stats(e, experiment_stats(r, e)))
            if st["state"] == ExperimentState.DONE and (st.get("best") or st.get("front")):
                print("\n".join(outputs(r, e, wd, _local_flag(wd))))
        return 0 if all(finals[e]["state"] == ExperimentState.DONE for e in exps) else 1


def _run(r: Any, url: str, wd: Path, workers: int, exps: list[str], t0: float, timeout_s: float | None,
         live: bool, resume_cmd: str) -> dict[str, dict]:
    """The fleet runs until every experiment of ``exps`` ended; whatever did not (Ctrl-C, a timeout,
    a process that died) is paused once the fleet has stopped, and the line says how to resume."""
    try:
        with daemons(url, wd, workers) as procs:
            return {e: watch(r, e, procs, t0, timeout_s, live, label=len(exps) > 1) for e in exps}
    finally:
        try:
            stopped = [e for e in exps if pause(r, e, f"pbt local was interrupted ({RESUME_HINT})")]
        except redis.RedisError:  # the server went first: the experiment stays "running", resumable all the same
            stopped = exps
        if stopped:
            print(f"\npbt local: {_names(stopped)} paused; resume with `{resume_cmd}`", flush=True)


def _names(exps: list[str]) -> str:
    return ", ".join(exps)


def _progress(r: Any, exp: str) -> str:
    st = status(r, exp)
    done = sum(m["state"] in ("done", "failed") for m in st["members"])
    return f"{done}/{st['population']} members finished"


def _local_flag(wd: Path) -> str:
    """Readers find ./PBT_LOCAL_DIR by themselves; another work dir they must be told."""
    return "" if wd == Path(settings.read("PBT_LOCAL_DIR")).resolve() else f" --local {shown(wd)}"


def watch(r: Any, exp: str, procs: list, t0: float, timeout_s: float | None, live: bool,
          label: bool = False) -> dict:
    """Until ``exp`` ends: a live table on a terminal, else a line every 5 s; returns its final status."""
    last_print = 0.0
    view = _LiveView() if live and sys.stdout.isatty() else None
    try:
        while True:
            st = status(r, exp)
            if ExperimentState(st["state"]).ended:
                return st
            dead = [p.args for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a pbt process exited early: {dead[0]}; see the logs")
            elapsed = time.monotonic() - t0
            if timeout_s is not None and elapsed > timeout_s:
                raise RuntimeError(f"timed out after {timeout_s} s")
            if view:
                view.update(format_status(st))
            elif live and elapsed - last_print >= 5:
                best = st["best"]
                b = f"best {best['member']} {st['metric']}={best['score']:.4g}" if best else \
                    f"front of {len(st['front'])}" if st.get("front") else "no score yet"
                steps = sum(m["step"] for m in st["members"])
                who = f"{exp}  " if label else ""
                print(f"  t={elapsed:5.0f}s  {who}{b}  finished {st['finished']}/{st['population']}  total steps {steps}",
                      flush=True)
                last_print = elapsed
            time.sleep(0.5)
    finally:
        if view:
            view.close()


class _LiveView:
    """A rich Live panel when stdout is a terminal."""

    def __init__(self) -> None:
        # its own ANSI goes to the terminal as is (the CLI escapes sys.stdout); the text it shows is escaped here
        self.live = Live(Text(""), console=Console(file=sys.__stdout__), refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, text: str) -> None:
        self.live.update(Text(escape_controls(text)))

    def close(self) -> None:
        self.live.stop()
