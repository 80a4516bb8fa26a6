"""Experiments side by side (``pbt compare EXP EXP ...`` and the dashboard's compare view): the
question every user asks, "did PBT beat my random search, or my last run?".

Each experiment is summarized from its lineage alone, so a finished run and a live one compare the
same way: the population's best score at each step, the best so far against wall time since launch,
the final best (the best of each member's newest scored segment) and the schedule that produced it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from pbt_mq.core.ids import entry_ms, now_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Lineage, Meta
from pbt_mq.observe.lineage import explain, phases
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records

MAX_COMPARED = 8  # experiments in one comparison (a chart with more lines reads as noise)


@dataclass(frozen=True)
class Summary:
    experiment: str
    name: str
    metric: str
    mode: str
    state: str
    final: float | None = None  # the best of each member's newest scored segment
    final_member: str = ""
    final_step: int = 0
    wall_s: float = 0.0  # launch to the newest record
    segments: int = 0
    by_step: list[tuple[int, float]] = field(default_factory=list)  # the best score of segments ending at each step
    by_time: list[tuple[float, float]] = field(default_factory=list)  # the best so far, at each improvement (s since launch)
    schedule: list[dict[str, Any]] = field(default_factory=list)  # the final best's phases: from_step, to_step, hparams

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(recs: list[Lineage], *, experiment: str, name: str, metric: str, mode: str, state: str,
              created_ms: int) -> Summary:
    """The summary of one experiment from its records, oldest first."""
    sign = 1.0 if mode == "max" else -1.0
    by_step: dict[int, float] = {}
    by_time: list[tuple[float, float]] = []
    newest: dict[str, Lineage] = {}
    last_ms = created_ms
    for rec in recs:
        if rec.id:
            last_ms = max(last_ms, entry_ms(rec.id))
        if rec.score is None or not math.isfinite(rec.score):
            continue
        if rec.step not in by_step or sign * rec.score > sign * by_step[rec.step]:
            by_step[rec.step] = rec.score
        if not by_time or sign * rec.score > sign * by_time[-1][1]:
            by_time.append((round((last_ms - created_ms) / 1000, 3), rec.score))
        if rec.ckpt_key:
            newest[rec.member] = rec
    wall_s = round((last_ms - created_ms) / 1000, 3)
    if by_time:
        by_time.append((wall_s, by_time[-1][1]))  # the best holds until the newest record
    final = max(newest.values(), key=lambda rec: (sign * rec.score, rec.member), default=None)
    return Summary(
        experiment=experiment, name=name, metric=metric, mode=mode, state=state,
        final=final.score if final else None, final_member=final.member if final else "",
        final_step=final.step if final else 0, wall_s=wall_s, segments=len(recs),
        by_step=sorted(by_step.items()), by_time=by_time,
        schedule=phases(explain(recs, final.ckpt_key)) if final else [],
    )


def collect(r: Any, exp: str) -> Summary:
    """One experiment's summary, read from Redis (and its archived records from the store)."""
    cfg = load_config(r, exp)
    meta = Meta.read(r, Keys(exp).meta, "state", "created_ms")
    return summarize(records(r, exp), experiment=exp, name=cfg.name, metric=cfg.metric, mode=cfg.mode,
                     state=str(meta.state) if meta.state else "?", created_ms=meta.created_ms or now_ms())


def count_problem(exps: list[str]) -> str | None:
    """Why these ids are not a comparison (None: they are): 2 to MAX_COMPARED different experiments."""
    n = len(set(exps))
    return None if 2 <= n <= MAX_COMPARED else f"give 2 to {MAX_COMPARED} different experiments, got {n}"


def comparable(summaries: list[Summary]) -> str | None:
    """Why these cannot be compared on one axis (None: they can): one metric, one direction."""
    kinds = sorted({f"{s.metric} ({s.mode})" for s in summaries})
    if len(kinds) > 1:
        return f"the experiments measure different things ({', '.join(kinds)}): compare runs of one metric"
    return None


def table(summaries: list[Summary]) -> str:
    """One line per experiment, best final first, and each one's difference to the best."""
    if not summaries:
        return ""
    sign = 1.0 if summaries[0].mode == "max" else -1.0
    ranked = sorted(summaries, key=lambda s: -sign * s.final if s.final is not None else math.inf)
    top = ranked[0].final
    lines = [f"{'experiment':30} {'state':8} {'final ' + summaries[0].metric:>16} {'vs the best':>12} {'member':>8}"
             f" {'step':>7} {'wall s':>9} {'segments':>9}"]
    for s in ranked:
        final = "-" if s.final is None else f"{s.final:.6g}"
        diff = "-" if s.final is None or top is None else f"{s.final - top:+.4g}"
        lines.append(f"{s.experiment:30} {s.state:8} {final:>16} {diff:>12} {s.final_member:>8} {s.final_step:>7}"
                     f" {s.wall_s:>9.1f} {s.segments:>9}")
    return "\n".join(lines)


def draw(summaries: list[Summary], out: str) -> list[str]:
    """A figure (PNG, SVG or PDF by ``out``'s extension): best score against step, against wall time, and
    each hyperparameter of the final bests' schedules. Returns the panels' labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional (the `plot` extra), as in observe.plot
    from matplotlib.figure import Figure

    names = sorted({k for s in summaries for ph in s.schedule for k, v in ph["hparams"].items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})[:4]
    fig = Figure(figsize=(5.2 * (2 + len(names)), 4.2), layout="constrained")
    axes = fig.subplots(1, 2 + len(names), squeeze=False)[0]
    metric = f"{summaries[0].metric} ({summaries[0].mode})"
    for s in summaries:
        label = f"{s.experiment} ({s.name})" if s.name and s.name not in s.experiment else s.experiment
        if s.by_step:
            axes[0].plot(*zip(*s.by_step, strict=True), marker=".", label=label)
        if s.by_time:
            axes[1].step(*zip(*s.by_time, strict=True), where="post", label=label)
        for ax, name in zip(axes[2:], names, strict=True):
            xs = [x for ph in s.schedule for x in (ph["from_step"], ph["to_step"])]
            ys = [ph["hparams"].get(name) for ph in s.schedule for _ in (0, 1)]
            ax.plot(xs, ys, label=label)
    titles = ["best score against step", "best so far against wall time", *(f"{n}: the final best's schedule" for n in names)]
    xlabels = ["step", "seconds since launch", *("step" for _ in names)]
    labels = ["best:step", "best:time", *(f"hparam:{n}" for n in names)]
    for ax, title, xl, lab in zip(axes, titles, xlabels, labels, strict=True):
        ax.set(title=title, xlabel=xl, ylabel=metric if lab.startswith("best") else lab.split(":", 1)[1], label=lab)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=110)
    return labels
