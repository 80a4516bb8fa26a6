"""What the dashboard shows, read from Redis and cached, so that any number of pages costs the
fleet about what one does.

- One refresh per experiment at a time, at most once per interval, whatever the number of
  requests and open pages: the others wait on its lock and reuse the result.
- The interval stretches with the cost of a refresh, so Redis spends at most ``DUTY`` of the
  wall time on one dashboard's reads (a population of thousands is read less often, not
  harder).
- The lineage is followed from the last entry id read (``follow.LineageLog``), at most
  ``BATCH`` entries a refresh; events/s comes from XINFO STREAM's counters, never by reading
  the events stream.
- A finished experiment's row of the list is read once and kept.

Everything here is plain data (dicts of JSON types); ``api`` serializes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis

from pbt_mq.config.experiment import Experiment
from pbt_mq.config.reader import ConfigError
from pbt_mq.core.ids import EXPERIMENT_ID, experiment_ids, leaders, member_ids, now_ms
from pbt_mq.core.keys import EXPERIMENTS, Keys
from pbt_mq.core.model import ExperimentState, Member, Meta
from pbt_mq.core.space import CategoricalSpace, FloatSpace
from pbt_mq.dashboard.bands import LARGE_POPULATION, MAX_NODES, TOP_LINES, Bands, top_rows
from pbt_mq.dashboard.follow import LineageLog
from pbt_mq.observe.compare import comparable, summarize
from pbt_mq.observe.top import workers
from pbt_mq.state.experiment import UnknownExperiment, load_config, metric_value, status

MIN_INTERVAL_S = 0.5  # a live experiment is read at most twice a second
ENDED_INTERVAL_S = 5.0  # an ended one still settles (members marked done), then hardly changes
LIST_INTERVAL_S = 2.0
DUTY = 0.25  # at most this fraction of the wall time spent reading for one view
BATCH = 5000  # lineage entries read per refresh
MAX_VIEWS = 32  # experiments kept in memory (least recently watched dropped first)
LIST_LIMIT = 200  # newest experiments in the list
UNREADABLE = "its stored config is unreadable (written by hand?): pbt status EXP says why"


def dumps(obj: Any) -> str:
    """Strict JSON (browsers refuse NaN): a non-finite float becomes null."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), default=str)
    except ValueError:
        return json.dumps(_clean(obj), allow_nan=False, separators=(",", ":"), default=str)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def spaces(cfg: Experiment) -> dict[str, dict[str, Any]]:
    """Each hyperparameter's space, for the schedule charts' axes."""
    out: dict[str, dict[str, Any]] = {}
    for name, sp in sorted(cfg.spaces.items()):
        if isinstance(sp, CategoricalSpace):
            out[name] = {"type": "categorical", "values": list(sp.values), "ordered": sp.ordered}
        else:
            out[name] = {"type": "float" if isinstance(sp, FloatSpace) else "int", "low": sp.low, "high": sp.high,
                         "log": sp.log}
    return out


class Paced:
    """A refresh that runs at most once per interval, the interval stretched to keep Redis's share at DUTY."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self.due = 0.0
        self.cost_s = 0.0

    def due_now(self) -> bool:
        return self.clock() >= self.due

    def done(self, started: float, floor_s: float, hurry: bool = False) -> None:
        self.cost_s = self.clock() - started
        # catching up on a backlog: at most half the time; otherwise at most DUTY
        self.due = self.clock() + (self.cost_s if hurry else max(floor_s, self.cost_s / DUTY - self.cost_s))


class ExperimentView:
    """One experiment as the page shows it: its summary and members (one JSON text shared by every
    page, rebuilt at most once per interval) and its lineage nodes, followed incrementally."""

    def __init__(self, r: Any, exp: str, board: Board) -> None:
        self.r, self.exp, self.board = r, exp, board
        self.log = LineageLog(exp)
        self.pace = Paced()
        self.generation = 0
        self.snapshot: dict[str, Any] = {}
        self.snapshot_json = "{}"
        self.error: str | None = None
        self.events_seen: tuple[float, int] | None = None  # (monotonic s, events added) at the last refresh
        self.events_per_s: float | None = None
        self.bands = Bands()
        self.banded = 0  # nodes added to the bands so far
        self.all_members: list[dict[str, Any]] = []  # every member (the snapshot may hold only the best)
        self.summary: tuple[int, Any] | None = None  # (generation, observe.compare.Summary): compare's, cached

    def refresh(self) -> None:
        """Read what changed, unless another request just did (then return at once with its result)."""
        if not self.pace.due_now():
            return
        with self.pace.lock:
            if not self.pace.due_now():
                return
            started, reading = self.pace.clock(), self.r
            try:
                self._refresh(started)
                self.error = self.log.archive_error  # None, or why the oldest records are missing
            except redis.RedisError as exc:  # Redis restarting: keep the last snapshot, say so, retry later
                self.error = f"redis: {exc}"
                self.pace.done(started, ENDED_INTERVAL_S)
                if self.r is not reading:  # the board switched Redis meanwhile (Board.switch): read the new one now
                    self.pace.due = 0.0

    def _refresh(self, started: float) -> None:
        more = self.log.poll(self.r, BATCH)
        st = status(self.r, self.exp)
        self._events_rate(started)
        snap = self._build(st, more)
        self.snapshot, self.snapshot_json = snap, dumps(snap)
        self.generation += 1
        ended = snap["state"] is not None and ExperimentState(snap["state"]).ended
        self.pace.done(started, ENDED_INTERVAL_S if ended and not more else MIN_INTERVAL_S, hurry=more)

    def _events_rate(self, t: float) -> None:
        """Events/s from XINFO STREAM (O(1)): entries-added where Redis has it (7+), else the length."""
        try:
            info = self.r.xinfo_stream(Keys(self.exp).events)
        except redis.ResponseError:  # no events stream (an experiment written by hand): no rate
            return
        added = info.get("entries-added", info.get("length", 0)) or 0
        if self.events_seen is not None and t > self.events_seen[0]:
            delta = added - self.events_seen[1]
            if delta >= 0:  # a trim between two reads (Redis 6, no counter) shows as a drop: skip it
                self.events_per_s = delta / (t - self.events_seen[0])
        self.events_seen = (t, added)

    def _build(self, st: dict[str, Any], more: bool) -> dict[str, Any]:
        cfg = load_config(self.r, self.exp)
        meta = Meta.read(self.r, Keys(self.exp).meta, "created_ms", "done_ms")
        now = now_ms()
        fleet = self.board.workers()
        health = {w["id"]: w["health"] for w in fleet}
        counts: dict[str, int] = {}
        for m in st["members"]:
            counts[m["state"]] = counts.get(m["state"], 0) + 1
            m["last_exploit"] = self.log.last_exploit.get(m["id"])
            m["worker_health"] = health.get(m["worker"], "gone") if m["worker"] else ""
            m["flag"] = m["state"] == "running" and m["worker_health"] != "ok"
        created = meta.created_ms or now
        self.all_members = st["members"]
        space = spaces(cfg)
        return {
            **st,
            **self._large(st, space),
            "counts": counts,  # members per state, over all of them (the page's one source)
            "name": cfg.name,
            "created_ms": created,
            "done_ms": meta.done_ms,
            "elapsed_s": ((meta.done_ms or now) - created) / 1000,
            "progress": progress(cfg, st["state"], [m["scored_step"] for m in st["members"]], st["finished"]),
            "stop_steps": cfg.stop.steps,
            "ready_steps": cfg.ready.steps,
            "hparam_spaces": space,
            "exploit_rule": cfg.exploit.rule,
            "explore_rule": cfg.explore.rule,
            "decisions": len(self.log.nodes),
            "actions": dict(self.log.actions),
            "decisions_per_s": self.log.rate(now),
            "events_per_s": self.events_per_s,
            "catching_up": more,
            "workers": [w for w in fleet if w.get("current", "").startswith(f"{self.exp}/") or w["id"] in
                        {m["worker"] for m in st["members"]}],
            "updated_ms": now,
        }

    def _large(self, st: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Above LARGE_POPULATION members: the best rows only, and a ``large`` part with the bands and
        the nodes of the best TOP_LINES members (``dashboard.bands``); nothing at or below it."""
        if len(st["members"]) <= LARGE_POPULATION:
            return {}
        for node in self.log.nodes[self.banded:]:
            self.bands.add(node, space)
        self.banded = len(self.log.nodes)
        rows = top_rows(st["members"], st["mode"] == "max")
        best = [m["id"] for m in rows[:TOP_LINES] if m.get("score") is not None]
        nodes = [{k: v for k, v in n.items() if k not in ("o", "w")} for n in self.log.subset(best)[-MAX_NODES:]]
        return {"members": rows, "large": {"bands": self.bands.summary(), "top": best, "nodes": nodes,
                                           "rows": len(rows), "threshold": LARGE_POPULATION}}

    def frame(self, cursor: int, limit: int = BATCH) -> tuple[str, int]:
        """The page's update from node ``cursor`` on: the shared snapshot JSON and the new nodes (none for
        a large population: its snapshot carries the nodes the page draws)."""
        if "large" in self.snapshot:
            cursor, limit = len(self.log.nodes), 0
        nodes = self.log.since(cursor, limit)
        nxt = max(cursor, 0) + len(nodes)
        text = (f'{{"generation":{self.generation},"snapshot":{self.snapshot_json},"from":{max(cursor, 0)},'
                f'"nodes":{dumps(nodes)},"next":{nxt},"total":{len(self.log.nodes)},"error":{dumps(self.error)}}}')
        return text, nxt


def progress(cfg: Experiment, state: str | None, steps: list[int | None], finished: int) -> float:
    """0..1: the members' scored steps against ``stop.steps`` (else the share finished)."""
    if state == ExperimentState.DONE:
        return 1.0
    if cfg.stop.steps:
        return sum(min(s or 0, cfg.stop.steps) for s in steps) / (len(steps) * cfg.stop.steps) if steps else 0.0
    return finished / cfg.population if cfg.population else 0.0


class Board:
    """Every view of one Redis: the experiments list, the workers, one ``ExperimentView`` per
    experiment watched (the MAX_VIEWS most recent)."""

    def __init__(self, r: Any, stale_s: float = 6.0, label: str = "") -> None:
        self.r = r
        self.label = label  # the Redis shown on the page (password redacted)
        self.stale_s = stale_s
        self.views: OrderedDict[str, ExperimentView] = OrderedDict()
        self.views_lock = threading.Lock()
        self.list_pace, self.list_rows = Paced(), []  # type: ignore[var-annotated]
        self.ended_rows: dict[str, dict[str, Any]] = {}
        self.configs: dict[str, Experiment] = {}
        self.workers_pace, self.workers_rows = Paced(), []  # type: ignore[var-annotated]

    def switch(self, r: Any, label: str) -> None:
        """Read another Redis holding the same experiments from now on (a ``pbt local`` run that ended:
        a copy of its saved state). The lineage is followed on from the last entry read, as before."""
        with self.views_lock:
            self.r, self.label = r, label
            for v in self.views.values():
                v.r = r
                v.pace.due = 0.0
        self.list_pace.due = self.workers_pace.due = 0.0

    def view(self, exp: str) -> ExperimentView:
        """The experiment's view, refreshed if due; UnknownExperiment if Redis has no such experiment."""
        if not EXPERIMENT_ID.match(exp):
            raise UnknownExperiment(exp)
        with self.views_lock:
            v = self.views.get(exp)
            if v is None:
                if not self.r.exists(Keys(exp).meta):
                    raise UnknownExperiment(exp)
                v = self.views[exp] = ExperimentView(self.r, exp, self)
                while len(self.views) > MAX_VIEWS:
                    self.views.popitem(last=False)
            self.views.move_to_end(exp)
        v.refresh()
        return v

    def compare(self, exps: list[str]) -> dict[str, Any]:
        """``pbt compare``'s summaries from the views' lineage (followed as for their pages); ``catching_up``
        while any view is still reading its log, ``problem`` when they measure different metrics."""
        out, catching_up = [], False
        for exp in exps:
            v = self.view(exp)
            snap = v.snapshot
            if not snap:
                raise redis.ConnectionError(v.error or "no snapshot yet")
            catching_up = catching_up or bool(snap["catching_up"])
            if v.summary is None or v.summary[0] != v.generation:  # computed once per refresh, for every page
                v.summary = (v.generation, summarize(list(v.log.recs), experiment=exp, name=snap["name"],
                                                     metric=snap["metric"], mode=snap["mode"],
                                                     state=snap["state"] or "?", created_ms=snap["created_ms"]))
            out.append(v.summary[1])
        return {"experiments": [s.to_json() for s in out], "problem": comparable(out), "catching_up": catching_up}

    def workers(self) -> list[dict[str, Any]]:
        """The fleet's heartbeats (``pbt top``'s reader), shared by every view."""
        if self.workers_pace.due_now():
            with self.workers_pace.lock:
                if self.workers_pace.due_now():
                    started = self.workers_pace.clock()
                    self.workers_rows = workers(self.r, now_ms(), self.stale_s)
                    self.workers_pace.done(started, MIN_INTERVAL_S * 2)
        return self.workers_rows

    def experiments(self) -> list[dict[str, Any]]:
        """The newest LIST_LIMIT experiments: state, best score, progress, age."""
        if self.list_pace.due_now():
            with self.list_pace.lock:
                if self.list_pace.due_now():
                    started = self.list_pace.clock()
                    self.list_rows = self._read_list()
                    self.list_pace.done(started, LIST_INTERVAL_S)
        return self.list_rows

    def _config_or_none(self, exp: str) -> Experiment | None:
        try:
            return self._config(exp)
        except ConfigError:
            return None

    def _config(self, exp: str) -> Experiment:
        if exp not in self.configs:
            self.configs[exp] = load_config(self.r, exp)
        return self.configs[exp]

    def _read_list(self) -> list[dict[str, Any]]:
        ids = experiment_ids(self.r.zrevrange(EXPERIMENTS, 0, LIST_LIMIT - 1))
        live = [e for e in ids if e not in self.ended_rows]
        fields = Meta.names("state", "reason", "name", "created_ms", "done_ms", "population", "finished", "metric",
                            "mode")
        pipe = self.r.pipeline(transaction=False)
        for e in live:
            pipe.hmget(Keys(e).meta, *fields)
            pipe.zrevrange(Keys(e).scores, 0, 15, withscores=True)
        replies = pipe.execute()
        rows: dict[str, dict[str, Any]] = {}
        unfinished: list[str] = []
        for n, e in enumerate(live):
            meta, top = Meta.pick(fields, replies[2 * n]), leaders(replies[2 * n + 1])
            if meta.state is None:
                continue  # launched a moment ago: its meta is not written yet
            best, cfg = None, self._config_or_none(e)
            if cfg is None:  # its stored config is unreadable: listed, with the reason, and nothing read from it
                meta = dataclasses.replace(meta, state=ExperimentState.FAILED if meta.state is ExperimentState.RUNNING
                                           else meta.state, reason=UNREADABLE)
            elif top:
                best = {"member": top[0][0], "score": metric_value(cfg, top[0][1])}
            rows[e] = {
                "experiment": e, "name": meta.name, "state": str(meta.state), "reason": meta.reason or None,
                "metric": meta.metric, "mode": meta.mode, "population": meta.population, "finished": meta.finished,
                "created_ms": meta.created_ms, "done_ms": meta.done_ms, "best": best, "progress": None,
            }
            if meta.state is not ExperimentState.DONE:
                unfinished.append(e)  # running, or stopped/failed part-way (read once more, then kept)
        self._progress(unfinished, rows)
        now = now_ms()
        out = []
        for e in ids:
            row = self.ended_rows.get(e) or rows.get(e)
            if row is None:
                continue
            if row["state"] != ExperimentState.RUNNING and e not in self.ended_rows:
                if row["state"] == ExperimentState.DONE:
                    row["progress"] = 1.0
                self.ended_rows[e] = row  # an ended experiment's row no longer changes
            out.append({**row, "age_s": (now - (row["created_ms"] or now)) / 1000})
        return out

    def _progress(self, running: list[str], rows: dict[str, dict[str, Any]]) -> None:
        """These experiments' progress: one HMGET per member, pipelined."""
        pipe = self.r.pipeline(transaction=False)
        running = [e for e in running if self._config_or_none(e) is not None]
        cfgs = {e: self._config(e) for e in running}
        for e in running:
            for m in member_ids(cfgs[e].population):
                pipe.hmget(Keys(e).member(m), *Member.names("scored_step"))
        replies = iter(pipe.execute()) if running else iter(())
        for e in running:
            steps = [Member.pick(("scored_step",), next(replies)).scored_step for _ in range(cfgs[e].population)]
            rows[e]["progress"] = progress(cfgs[e], rows[e]["state"], steps, rows[e]["finished"])


