"""A large population as a browser can draw it: per ready step, quantiles of the score and of each
numeric hyperparameter over every segment that ended there, instead of a line per member.

Above ``LARGE_POPULATION`` members the page gets these bands, the best ``TOP_LINES`` members' own
lines with their ancestry, and the best ``TOP_ROWS`` rows of the members table (plus failing ones),
so an update stays well under 1 MB whatever the population (up to ``config.parse.MAX_POPULATION``).
Values are accumulated as lineage nodes arrive (``add``); quantiles are computed per refresh.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

LARGE_POPULATION = 256  # above this, bands and the top members; at or below, every member's line
TOP_LINES = 10  # members drawn as lines on top of the bands (the best by score)
TOP_ROWS = 100  # rows of the members table: the best by score, then failing or flagged ones
MAX_PROBLEM_ROWS = 50
MAX_BUCKETS = 200  # steps per band; more distinct steps are merged into this many groups
MAX_NODES = 2000  # nodes of the best members and their ancestry sent per update (the newest; long runs are cut)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
NAMES = ("p10", "p25", "p50", "p75", "p90")


def quantile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def band(groups: list[list[float]]) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {name: [] for name in NAMES}
    for xs in groups:
        xs = sorted(xs)
        for name, q in zip(NAMES, QUANTILES, strict=True):
            out[name].append(quantile(xs, q) if xs else None)
    return out


class Bands:
    """Per end step: the finite scores and the numeric hyperparameter values of the segments that
    ended there (categorical values by their index in the space)."""

    def __init__(self) -> None:
        self.scores: dict[int, list[float]] = defaultdict(list)
        self.hparams: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.added = 0  # values added: the summary is recomputed only when it grew
        self.last: tuple[int, dict[str, Any]] | None = None

    def add(self, node: dict[str, Any], spaces: dict[str, dict[str, Any]]) -> None:
        y, step = node.get("y"), node.get("b")
        if y is None or not isinstance(step, int):
            return  # a failed or replaced segment: no score to show
        self.scores[step].append(float(y))
        self.added += 1
        for name, value in (node.get("h") or {}).items():
            v = numeric(spaces.get(name), value)
            if v is not None:
                self.hparams[name][step].append(v)

    def summary(self) -> dict[str, Any]:
        """{"steps": [...], "score": {p10: [...], ...}, "hparams": {name: {p10: [...], ...}}, "n": [...]};
        the last one again when no segment was added since (a finished run's refreshes sort nothing)."""
        if self.last is not None and self.last[0] == self.added:
            return self.last[1]
        steps = sorted(self.scores)
        count = min(len(steps), MAX_BUCKETS)
        groups = [steps[i * len(steps) // count:(i + 1) * len(steps) // count] for i in range(count)]

        def merged(by_step: dict[int, list[float]]) -> list[list[float]]:
            return [[x for s in g for x in by_step.get(s, ())] for g in groups]

        out = {"steps": [g[-1] for g in groups], "n": [sum(len(self.scores[s]) for s in g) for g in groups],
               "score": band(merged(self.scores)),
               "hparams": {name: band(merged(by_step)) for name, by_step in sorted(self.hparams.items())}}
        self.last = (self.added, out)
        return out


def numeric(space: dict[str, Any] | None, value: Any) -> float | None:
    """A value as the schedule charts plot it: a number, or a categorical's index in its space."""
    if space is None:
        return None
    if space.get("type") == "categorical":
        values = space.get("values") or []
        return float(values.index(value)) if value in values else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        v = float(value)  # an integer of 400 digits (written by hand) does not fit a float
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def top_rows(members: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """The members table of a large population: the best TOP_ROWS by score, then up to
    MAX_PROBLEM_ROWS failed or flagged ones (the rows a user must see), each once."""
    scored = [m for m in members if isinstance(m.get("score"), (int, float)) and math.isfinite(m["score"])]
    scored.sort(key=lambda m: (-m["score"] if higher_is_better else m["score"], m["id"]))
    rows = scored[:TOP_ROWS]
    shown = {m["id"] for m in rows}
    problems = [m for m in members if m["id"] not in shown and (m.get("state") == "failed" or m.get("flag"))]
    return rows + problems[:MAX_PROBLEM_ROWS]
