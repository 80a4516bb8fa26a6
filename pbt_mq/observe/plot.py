"""``pbt plot EXP -o report.png``: the PBT paper's figures for the user's own run (matplotlib, headless).

Three kinds of panel, each labelled (``Axes.get_label()``) so tools and tests can find them:

* ``score`` (and ``score:zoom`` when early history dominates the range): the metric vs step for every member. Each segment is drawn from the state
  it started from, so after an exploit the member's curve visibly restarts at the
  donor's point; a triangle marks the exploit and a dotted line shows what the member
  abandoned. The best member's ancestry is drawn over it in black.
* ``hparam:NAME``: each hyperparameter's value vs step per member (the schedules PBT
  discovered), the best ancestry's schedule in black; log axes for log spaces.
* ``lineage``: the genealogy: one lane per member, segments whose state survives in
  some final member in colour, extinct ones in grey, an arrow per exploit (donor lane
  to copier lane), and the best member's ancestry as a thick black path, its
  mutations written beside it.

Everything comes from the lineage stream (``observe.lineage``); matplotlib, an optional
dependency (the ``plot`` extra), is imported only here, with the Agg backend and no pyplot, so it never needs a display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.observe.lineage import explain, exploits, histories, target
from pbt_mq.state.experiment import load_config
from pbt_mq.state.front import latest_values, pareto_front
from pbt_mq.state.lineage import ancestry, records

BEST = "black"
EXTINCT = "#c8c8c8"
MAX_LEGEND = 12
MAX_NOTES = 10  # mutation notes written on the lineage panel


@dataclass
class Report:
    """The plotted data, read once from Redis."""

    exp: str
    cfg: Experiment
    hist: dict[str, list[dict[str, Any]]]
    exploits: list[dict[str, Any]]
    best: dict[str, Any] | None
    chain: list[dict[str, Any]]
    surviving: set[str]  # checkpoint keys that are ancestors of some member's final state
    values: dict[str, list[float]] | None = None  # several metrics: every member's latest values
    front: list[str] | None = None  # several metrics: the non-dominated members


def collect(r: Any, exp: str) -> Report:
    cfg = load_config(r, exp)
    recs = records(r, exp)
    hist = histories(recs)
    try:
        best = target(r, exp)
        chain = explain(recs, best["ckpt_key"])
    except LookupError:
        best, chain = None, []
    surviving: set[str] = set()
    for segs in hist.values():
        surviving.update(rec.ckpt_key for rec in ancestry(recs, segs[-1]["ckpt_key"]))
    rep = Report(exp, cfg, hist, exploits(recs), best, chain, surviving)
    if cfg.multi:
        rep.values = latest_values(r, exp)
        rep.front = [row["member"] for row in pareto_front(r, cfg, exp)]
    return rep


def figure(rep: Report) -> Any:
    """The whole report as one matplotlib Figure (no pyplot: nothing global, nothing shown)."""
    from matplotlib.figure import Figure  # optional (the `plot` extra): only drawing needs it

    names = sorted(rep.cfg.spaces)
    hp_rows = math.ceil(len(names) / 2)
    lanes = max(len(rep.hist), 1)
    heights = [4.6] + [2.9] * hp_rows + [max(2.6, 0.32 * lanes + 1.2)] + ([4.6] if rep.cfg.multi else [])
    fig = Figure(figsize=(15, sum(heights) + 1.1), dpi=100, layout="constrained")
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
    colors = member_colors(sorted(rep.hist))
    band = zoom_band(rep)
    if band is None:
        score_panel(fig.add_subplot(grid[0, :]), rep, colors)
    else:  # most of the range is early history: add a panel on the band where the race is decided
        top = grid[0, :].subgridspec(1, 2, width_ratios=[3, 2])
        score_panel(fig.add_subplot(top[0]), rep, colors)
        zoom = fig.add_subplot(top[1])
        score_panel(zoom, rep, colors, legend=False)
        zoom.set_ylim(*band[2:])
        zoom.set_xlim(*band[:2])
        zoom.set_label("score:zoom")
        zoom.set_title(f"zoom: the last half of the run, {rep.cfg.metric} in [{band[2]:.4g}, {band[3]:.4g}]",
                       loc="left", fontsize=10)
    for i, name in enumerate(names):
        span = grid[1 + i // 2, :] if len(names) % 2 and i == len(names) - 1 else grid[1 + i // 2, i % 2]
        hparam_panel(fig.add_subplot(span), rep, name, colors)
    lineage_panel(fig.add_subplot(grid[len(heights) - (2 if rep.cfg.multi else 1), :]), rep, colors)
    if rep.cfg.multi:
        front_panel(fig.add_subplot(grid[-1, :]), rep, colors)
    fig.suptitle(title(rep), fontsize=13, x=0.01, ha="left")
    return fig


def write(rep: Report, path: str | Path) -> list[str]:
    """Render to ``path`` (PNG, or whatever the suffix names); return the panel labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional, as above

    fig = figure(rep)
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return [ax.get_label() for ax in fig.axes]


def title(rep: Report) -> str:
    cfg = rep.cfg
    n_seg = sum(len(s) for s in rep.hist.values())
    head = f"{rep.exp}: population {cfg.population}, {n_seg} segments, {len(rep.exploits)} exploits"
    rules = f"exploit {cfg.exploit.rule}, explore {cfg.explore.rule}"
    if not rep.best:
        return f"{head} ({rules}); no member has a score yet"
    b = rep.best
    if cfg.multi:
        return f"{head} ({rules})\nPareto front ({', '.join(cfg.metrics)}): {', '.join(rep.front or [])}"
    return f"{head} ({rules})\nbest: {b['member']}, {cfg.metric} = {b['score']:.6g} at step {b['step']}"


def member_colors(members: list[str]) -> dict[str, Any]:
    import matplotlib  # optional, as above

    cmap = matplotlib.colormaps["tab10" if len(members) <= 10 else "tab20" if len(members) <= 20 else "viridis"]
    n = max(len(members), 1)
    pick = (lambda i: cmap(i)) if len(members) <= 20 else (lambda i: cmap(i / max(n - 1, 1)))
    return {m: pick(i) for i, m in enumerate(members)}


# ---------------------------------------------------------------- panels


def zoom_band(rep: Report) -> tuple[float, float, float, float] | None:
    """(x0, x1, y0, y1) around the last half of the run's best 90% of scores, if under a third of the range."""
    pts = [(s["to_step"], s["score"]) for segs in rep.hist.values() for s in segs if _finite(s["score"])]
    if len(pts) < 8:
        return None
    ys = sorted(y for _, y in pts)
    half = max(x for x, _ in pts) / 2
    late = sorted(y for x, y in pts if x >= half)
    if not late:
        return None
    lo, hi = (late[len(late) // 10], late[-1]) if rep.cfg.mode == "max" else (late[0], late[-1 - len(late) // 10])
    full = ys[-1] - ys[0]
    if full <= 0 or hi <= lo or (hi - lo) > full / 3:
        return None
    pad, end = (hi - lo) * 0.15, max(x for x, _ in pts)
    return half, end + end * 0.02, lo - pad, hi + pad


def score_panel(ax: Any, rep: Report, colors: dict[str, Any], legend: bool = True) -> None:
    ax.set_label("score")
    metric = rep.cfg.metric
    for m, segs in sorted(rep.hist.items()):
        for s in segs:
            x0, y0 = s["start"]["step"], s["start"].get("score")
            xs, ys = ([x0, s["to_step"]], [y0, s["score"]]) if _finite(y0) else ([s["to_step"]], [s["score"]])
            ax.plot(xs, ys, color=colors[m], lw=1.3, alpha=0.9, marker=".", ms=3, zorder=3,
                    label=m if s is segs[0] else None)
    for e in rep.exploits:
        if _finite(e["parent_score"]):
            ax.plot([e["step"], e["parent_step"]], [e["score"], e["parent_score"]], ls=":", lw=0.9, color="grey")
            ax.plot(e["parent_step"], e["parent_score"], marker="v", ms=7, color=colors[e["member"]], mec="black", mew=0.6,
                    zorder=4)
    if rep.chain:
        ax.plot([rep.chain[0]["from_step"]] + [s["to_step"] for s in rep.chain],
                [math.nan] + [s["score"] for s in rep.chain], color=BEST, lw=5, alpha=0.25, zorder=2,
                label="best ancestry")
    ax.plot([], [], ls=":", color="grey", marker="v", mec="black", label="exploit: copy donor, explore")
    ax.set_title(f"{metric} vs step for every member ({'higher' if rep.cfg.mode == 'max' else 'lower'} is better); "
                 "▼ where a member restarted from a donor's checkpoint", loc="left", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    if legend:
        _legend(ax, set(rep.hist))


def front_panel(ax: Any, rep: Report, colors: dict[str, Any]) -> None:
    """Several metrics: every member's latest values on the first two, the Pareto front joined up."""
    ax.set_label("front")
    cfg, values, on_front = rep.cfg, rep.values or {}, set(rep.front or [])
    for m, v in sorted(values.items()):
        ax.scatter(v[0], v[1], s=70 if m in on_front else 30, color=colors.get(m, "grey"),
                   edgecolors=BEST if m in on_front else "none", linewidths=1.2, zorder=3)
        ax.annotate(f" {m}", (v[0], v[1]), fontsize=7)
    pts = sorted((values[m][0], values[m][1]) for m in on_front)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=BEST, lw=1, ls="--", zorder=2, label="Pareto front")
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(f"{cfg.metrics[0]} ({cfg.modes[0]})")
    ax.set_ylabel(f"{cfg.metrics[1]} ({cfg.modes[1]})")
    ax.set_title(f"Pareto front: every member's latest values ({len(on_front)} of {len(values)} non-dominated, "
                 "black edge)" + (f"; first two of {len(cfg.metrics)} metrics" if len(cfg.metrics) > 2 else ""),
                 loc="left", fontsize=10)
    ax.grid(alpha=0.3)


def hparam_panel(ax: Any, rep: Report, name: str, colors: dict[str, Any]) -> None:
    ax.set_label(f"hparam:{name}")
    space = rep.cfg.spaces[name]
    to_y, ticks = axis_map(space)
    for m, segs in sorted(rep.hist.items()):
        prev = None
        for s in segs:
            y = to_y(s["hparams"].get(name))
            if prev is not None and s["start"]["kind"] != "continue":
                ax.plot([s["from_step"]] * 2, [prev, y], color=colors[m], lw=0.8, ls=":", alpha=0.8)
            ax.plot([s["from_step"], s["to_step"]], [y, y], color=colors[m], lw=1.4, alpha=0.8)
            prev = y
    xs, ys = [], []
    for s in rep.chain:
        y = to_y(s["hparams"].get(name))
        xs += [s["from_step"], s["to_step"]]
        ys += [y, y]
    ax.plot(xs, ys, color=BEST, lw=2.4, alpha=0.75)
    if getattr(space, "log", False):
        ax.set_yscale("log")
    if ticks:
        ax.set_yticks(range(len(ticks)), [str(t) for t in ticks])
    ax.set_title(f"{name}: value vs step per member (black: the best's schedule)", loc="left", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)


def lineage_panel(ax: Any, rep: Report, colors: dict[str, Any]) -> None:
    ax.set_label("lineage")
    lane = {m: i for i, m in enumerate(sorted(rep.hist))}
    for m, segs in rep.hist.items():
        for s in segs:
            alive = s["ckpt_key"] in rep.surviving
            ax.plot([s["from_step"], s["to_step"]], [lane[m]] * 2, color=colors[m] if alive else EXTINCT,
                    lw=3 if alive else 2, solid_capstyle="butt")
    for e in rep.exploits:
        if e["parent"] in lane:
            ax.annotate("", xy=(e["parent_step"], lane[e["member"]]), xytext=(e["parent_step"], lane[e["parent"]]),
                        arrowprops={"arrowstyle": "->", "color": "grey", "lw": 0.7, "alpha": 0.8})
    best_path(ax, rep, lane)
    ax.set_yticks(range(len(lane)), list(lane))
    ax.set_ylim(-0.7, len(lane) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_title("lineage: lanes are members, arrows are exploits (donor → copier); colour = state that survives "
                 "to the end, grey = extinct; black = the best member's ancestry", loc="left", fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def best_path(ax: Any, rep: Report, lane: dict[str, int]) -> None:
    """The best member's ancestry as one path through the lanes, its mutations written beside it."""
    if not rep.chain:
        return
    xs, ys, notes = [], [], 0
    for s in rep.chain:
        if s["start"]["kind"] in ("exploit", "replaced") and xs:
            xs.append(s["from_step"])
            ys.append(lane[s["member"]])
            if notes < MAX_NOTES and s["start"]["ops"]:
                ax.annotate(short_ops(s["start"]["ops"]), (s["from_step"], lane[s["member"]]), xytext=(4, 6),
                            textcoords="offset points", fontsize=7, color="#333333")
                notes += 1
        xs += [s["from_step"], s["to_step"]]
        ys += [lane[s["member"]]] * 2
    ax.plot(xs, ys, color=BEST, lw=1.8)
    ax.plot(xs[0], ys[0], "o", color=BEST, ms=5)
    ax.plot(xs[-1], ys[-1], "*", color=BEST, ms=12)
    b = rep.best or {}
    ax.annotate(f" {b.get('member')}: {rep.cfg.metric} = {b.get('score', math.nan):.4g}", (xs[-1], ys[-1]),
                xytext=(6, -3), textcoords="offset points", fontsize=8, fontweight="bold")


def short_ops(ops: list[str]) -> str:
    """``lr: 0.01 --(x0.8)--> 0.008`` → ``lr x0.8``: what the mutation did, in a few characters."""
    out = []
    for op in ops:
        name, _, rest = op.partition(": ")
        how = rest.partition("--(")[2].partition(")")[0]
        out.append(f"{name} {how}")
    return ", ".join(out)


def axis_map(space: Any) -> tuple[Any, list[Any] | None]:
    """How a value is placed on the y axis: as itself, or by index for non-numeric categoricals."""
    values = getattr(space, "values", None)
    if values is None or all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return (lambda v: float(v) if isinstance(v, (int, float)) else math.nan), None
    index = {v: i for i, v in enumerate(values)}
    return (lambda v: index.get(v, math.nan)), list(values)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _legend(ax: Any, members: set[str]) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if len(members) > MAX_LEGEND:  # too many to name: keep only the markers' meanings
        keep = [(h, lab) for h, lab in zip(handles, labels, strict=True) if lab not in members]
        handles, labels = [h for h, _ in keep], [lab for _, lab in keep]
    ax.legend(handles, labels, fontsize=8, loc="lower right", ncol=2 if len(labels) > 6 else 1, framealpha=0.85)
