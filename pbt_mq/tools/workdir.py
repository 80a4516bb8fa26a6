"""A ``pbt local`` work dir, and where a command finds its experiments.

A work dir (default ``.pbt-local/``, env ``PBT_LOCAL_DIR``) holds everything of the runs made
in it, any number of experiments::

    appendonly.aof | appendonlydir/   Redis's append-only file: the experiments' whole state
    redis.log                         the private redis-server's log
    redis.port                        while ``pbt local`` runs: its server (JSON: port, pid, run_id)
    pbt-local.lock                    locked (flock) by the ``pbt local`` running here
    checkpoints/                      the file:// checkpoint store
    logs/                             arbiter.log, worker-N.log
    EXP/report.png, EXP/best/         written when EXP ends: ``pbt plot`` and ``pbt export --best``

A command that reads experiments (``redis_for``) takes them, in this order, from: ``--redis``;
``--local DIR``; ``PBT_REDIS_URL``; ``./.pbt-local`` (``PBT_LOCAL_DIR``) if it holds saved state;
else ``redis://localhost:6379/0``. From a work dir it attaches to the live ``pbt local``'s server
(found through ``redis.port``; one whose server is gone is stale and ignored), or else serves
itself from a copy of the saved state (a private redis-server for the command's duration, in a
temporary dir): the work dir's files are never written by a reader, and two servers never share
them. It says which, in one line on stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pbt_mq.broker.connect import DEFAULT_URL, connect
from pbt_mq.core import settings
from pbt_mq.core.ids import experiment_ids
from pbt_mq.core.keys import EXPERIMENTS, Keys
from pbt_mq.core.model import Meta
from pbt_mq.tools.redis_server import AOF_DIR, AOF_FILE, START_TIMEOUT_S, has_aof, private_redis

PORT_FILE = "redis.port"
LOCK_FILE = "pbt-local.lock"
LOCK_WAIT_S = 5.0  # a reader's probe holds the lock for microseconds; pbt local waits this long for it


class WorkDirError(RuntimeError):
    """A work dir that cannot be used as asked; str() is the one line to print."""


def has_state(d: Path) -> bool:
    """Whether ``d`` holds a ``pbt local``'s saved state (or a live one's port file)."""
    return has_aof(d) or (d / PORT_FILE).is_file()


def shown(d: Path) -> str:
    """``d`` as the user would type it: relative to the current directory when inside it."""
    try:
        rel = d.resolve().relative_to(Path.cwd().resolve())
        return str(rel) if str(rel) != "." else "."
    except ValueError:
        return str(d)


# ------------------------------------------------------------------ the live server: port file, lock


def read_port_file(d: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((d / PORT_FILE).read_text())
        return rec if isinstance(rec, dict) and isinstance(rec.get("port"), int) else None
    except (OSError, ValueError):
        return None


def live_url(d: Path) -> str | None:
    """The URL of the server ``d/redis.port`` names, if that very server still answers (its run_id
    matches); None when there is no port file or it is stale (the server is gone, or the port now
    belongs to another one)."""
    rec = read_port_file(d)
    if rec is None:
        return None
    url = f"redis://127.0.0.1:{rec['port']}/0"
    try:
        r = connect(url, retries=0)
        same = r.info("server").get("run_id") == rec.get("run_id")
        r.close()
    except Exception:  # refused, not Redis, protected: not ours
        return None
    return url if same else None


def locked(d: Path) -> bool:
    """Whether a ``pbt local`` holds ``d``'s lock now (a probe: takes and drops a shared lock)."""
    path = d / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def _shared(d: Path) -> Iterator[None]:
    """A shared hold on ``d``'s lock while a reader copies its saved state; refused if a ``pbt local``
    holds it (it started meanwhile: its live server is what to read). Every dir a pbt local ran
    in keeps its lock file; a reader never creates one."""
    if not (d / LOCK_FILE).exists():
        yield
        return
    with open(d / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkDirError(f"a pbt local started in {shown(d)} as its saved state was being read:"
                               " run the command again (it then reads the live one)") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold(d: Path) -> Iterator[None]:
    """``d``'s lock, for the life of one ``pbt local``; WorkDirError if another one holds it."""
    f = open(d / LOCK_FILE, "a")
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    rec = read_port_file(d) or {}
                    pid = f" (pid {rec['pid']})" if rec.get("pid") else ""
                    raise WorkDirError(f"another pbt local runs in {shown(d)}{pid}: wait for it to end"
                                       " (or Ctrl-C it), or give this one another --dir") from None
                time.sleep(0.1)
        yield
    finally:
        f.close()  # drops the lock


@contextlib.contextmanager
def serve_in_place(d: Path) -> Iterator[str]:
    """What ``pbt local`` runs on: a private redis-server keeping its AOF in ``d``, under ``d``'s
    lock, named in ``d/redis.port`` until it stops. Yields its URL."""
    d.mkdir(parents=True, exist_ok=True)
    with hold(d):
        orphan = live_url(d)
        if orphan:
            port = orphan.rsplit(":", 1)[1].split("/")[0]
            raise WorkDirError(f"a redis-server left by a killed pbt local still serves {shown(d)} on port {port}:"
                               f" stop it (redis-cli -p {port} shutdown), then run this again")
        with private_redis(d, persist=True) as url:
            r = connect(url)
            rec = {"port": int(url.rsplit(":", 1)[1].split("/")[0]), "pid": os.getpid(),
                   "run_id": r.info("server")["run_id"]}
            r.close()
            tmp = d / f".{PORT_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(rec) + "\n")
            os.replace(tmp, d / PORT_FILE)  # readers never see half a file
            try:
                yield url
            finally:
                with contextlib.suppress(FileNotFoundError):
                    (d / PORT_FILE).unlink()


def relocate(r: Any, d: Path) -> list[str]:
    """A work dir that was moved or renamed: its experiments' ``file://`` store still names the old
    ``checkpoints/``; point those whose checkpoints are here, and not there, here. Returns them."""
    here = (d / "checkpoints").resolve()
    ids = experiment_ids(r.zrange(EXPERIMENTS, 0, -1))
    moved = []
    for e in ids:
        store = Meta.read(r, Keys(e).meta, "store").store
        old = Path(store[len("file://"):]) if store.startswith("file://") else None
        if old is not None and old != here and not old.exists() and (here / e).is_dir():
            r.hset(Keys(e).meta, mapping=Meta.fields(store=f"file://{here}"))
            moved.append(e)
    return moved


# ------------------------------------------------------------------ readers


@contextlib.contextmanager
def serve_snapshot(d: Path) -> Iterator[str]:
    """A private redis-server on a copy of ``d``'s saved state, for one command; the copy goes with it."""
    with tempfile.TemporaryDirectory(prefix="pbt-saved-state-") as tmp, contextlib.ExitStack() as stack:
        copy = Path(tmp)
        with _shared(d):  # no pbt local starts writing the AOF while it is copied
            if (d / AOF_DIR).is_dir():
                shutil.copytree(d / AOF_DIR, copy / AOF_DIR)
            if (d / AOF_FILE).is_file():
                shutil.copy2(d / AOF_FILE, copy / AOF_FILE)
        try:
            url = stack.enter_context(private_redis(copy, persist=True))
        except RuntimeError as exc:
            log = (copy / "redis.log").read_text(errors="replace").strip().splitlines()
            raise WorkDirError(f"cannot load the saved state of {shown(d)}: {log[-1] if log else exc}") from None
        relocate(connect(url), d)  # in the copy
        _SNAPSHOTS[url] = d
        try:
            yield url
        finally:
            _SNAPSHOTS.pop(url, None)


_SNAPSHOTS: dict[str, Path] = {}  # URL -> work dir, for each copy this process serves now


def saved_copy_of(url: str) -> Path | None:
    """The work dir whose saved state ``url`` serves a copy of (None: a live Redis): such a copy
    never changes, so a command that waits for a change must not wait on it."""
    return _SNAPSHOTS.get(url)


@contextlib.contextmanager
def serve_workdir(d: Path) -> Iterator[str]:
    """Read ``d``: its live ``pbt local``'s server, else a copy of its saved state; one line on stderr says which."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while live_url(d) is None and locked(d) and time.monotonic() < deadline:
        time.sleep(0.1)  # pbt local is starting: its port file comes once its server has loaded
    url = live_url(d)
    if url:
        _say(f"reading the live pbt local in {shown(d)} ({url})")
        _LIVE[url] = d
        try:
            yield url
        finally:
            _LIVE.pop(url, None)
        return
    if not has_aof(d):
        raise WorkDirError(f"{shown(d)}: no saved pbt local state there (no {AOF_FILE} or {AOF_DIR}/);"
                           " run `pbt local FILE --dir DIR` first, or pass --redis URL")
    stale = f"; the {PORT_FILE} there is stale: its server is gone" if (d / PORT_FILE).is_file() else ""
    _say(f"reading the saved state of {shown(d)} (pbt local is not running there{stale})")
    with serve_snapshot(d) as url:
        yield url


_LIVE: dict[str, Path] = {}  # URL -> work dir, for each live pbt local server this process reads now


def live_dir_of(url: str) -> Path | None:
    """The work dir whose live ``pbt local`` serves ``url`` (None: another Redis, or a saved copy)."""
    return _LIVE.get(url)


def follow_to_saved_state(d: Path, url: str, switch: Callable[[str], None], poll_s: float = 0.5) -> threading.Thread:
    """For a reader that outlives the run it reads (``pbt dashboard --local``): once the live
    ``pbt local`` at ``url`` has ended and released ``d``, serve a copy of its saved state and call
    ``switch(new_url)``. The copy's server stops when this process exits."""
    stack = contextlib.ExitStack()
    atexit.register(stack.close)

    def watch() -> None:
        while live_url(d) == url or locked(d):  # running, or still writing its AOF
            time.sleep(poll_s)
        try:
            new = stack.enter_context(serve_snapshot(d))
            _say(f"the pbt local in {shown(d)} ended: reading its saved state now ({new})")
            switch(new)
        except Exception as exc:  # noqa: BLE001 (a thread's last guard: one line, never a traceback)
            _say(f"the pbt local in {shown(d)} ended, and its saved state cannot be read: {exc}")
            stack.close()
            return
        threading.Event().wait()  # this thread started the copy's server (its parent-death signal): it stays

    thread = threading.Thread(target=watch, name="pbt-local-follower", daemon=True)
    thread.start()
    return thread


def _say(line: str) -> None:
    print(f"pbt: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def redis_for(a: argparse.Namespace) -> Iterator[str]:
    """The Redis URL a command that reads experiments uses, for parsed args with ``redis`` (and,
    after ``cli.options.resolve``, ``origin``: where each setting-bound option's value came from)
    and ``local``. The order is in this module's docstring; a flag wins over a variable."""
    origin = getattr(a, "origin", {}).get("redis", "flag")
    local = getattr(a, "local", None)
    if origin == "flag" or (origin == "env" and not local):
        yield a.redis
        return
    if local:
        with serve_workdir(Path(local)) as url:
            yield url
        return
    implicit = Path(settings.read("PBT_LOCAL_DIR"))
    if has_state(implicit):
        with serve_workdir(implicit) as url:
            yield url
        return
    yield a.redis if a.redis else DEFAULT_URL
