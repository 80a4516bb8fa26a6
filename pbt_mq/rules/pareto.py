"""Multi-objective ranking (MO-PBT, Dushatskiy et al., ICML 2023): non-dominated sorting, then crowding
distance, as one order the single-objective rules act on; and the hypervolume that compares fronts.

Pure and shared: the arbiter orders a board with it (``control.pyrule``), ``pbt status``/``plot``/``export``
take the front from it, ``pbt study`` measures hypervolumes with it. Vectors are *oriented*: every
objective higher-is-better (a "min" objective negated, as the single-objective leaderboard does).

The order becomes a scalar per member, ``-rank + 0.5 * c / (1 + c)`` (rank 0 for the first front; ``c``
its crowding distance, infinite at a front's ends: 0.5), so a member on a better front always outranks
one on a worse front, within a front the less crowded one ranks higher, and equal (rank, crowding) are
exact ties the rules' ``ties`` setting deals with. That scalar board is what the exploit rule sees and
what the lineage keeps, so a decision replays from its record like any other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Vector = Sequence[float]


def dominates(a: Vector, b: Vector) -> bool:
    """a is at least as good as b everywhere and better somewhere (higher is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def fronts(points: Mapping[str, Vector]) -> list[list[str]]:
    """Non-dominated sorting: the first front (no one dominates them), then the next once it is removed, ..."""
    names = sorted(points)
    beaten_by = {m: 0 for m in names}
    beats: dict[str, list[str]] = {m: [] for m in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if dominates(points[a], points[b]):
                beats[a].append(b)
                beaten_by[b] += 1
            elif dominates(points[b], points[a]):
                beats[b].append(a)
                beaten_by[a] += 1
    out: list[list[str]] = []
    current = [m for m in names if beaten_by[m] == 0]
    while current:
        out.append(current)
        nxt = []
        for a in current:
            for b in beats[a]:
                beaten_by[b] -= 1
                if beaten_by[b] == 0:
                    nxt.append(b)
        current = sorted(nxt)
    return out


def crowding(front: Sequence[str], points: Mapping[str, Vector]) -> dict[str, float]:
    """NSGA-II's crowding distance within one front: per objective, the normalised gap between a member's
    neighbours, summed; the ends of each objective's range are infinitely far (always kept)."""
    dist = {m: 0.0 for m in front}
    if len(front) <= 2:
        return {m: math.inf for m in front}
    for j in range(len(points[front[0]])):
        by = sorted(front, key=lambda m: (points[m][j], m))
        lo, hi = points[by[0]][j], points[by[-1]][j]
        dist[by[0]] = dist[by[-1]] = math.inf
        if hi == lo:
            continue
        for prev, m, nxt in zip(by, by[1:], by[2:], strict=False):
            dist[m] += (points[nxt][j] - points[prev][j]) / (hi - lo)
    return dist


def pareto_scores(points: Mapping[str, Vector]) -> dict[str, float]:
    """member -> the scalar that orders it: -rank + 0.5 * c / (1 + c) (module docstring)."""
    out: dict[str, float] = {}
    for rank, front in enumerate(fronts(points)):
        for m, c in crowding(front, points).items():
            out[m] = -rank + (0.5 if math.isinf(c) else 0.5 * c / (1.0 + c))
    return out


def front(points: Mapping[str, Vector]) -> list[str]:
    """The non-dominated members (the first front), by id."""
    f = fronts(points)
    return f[0] if f else []


def oriented(values: Sequence[float], modes: Sequence[str]) -> tuple[float, ...]:
    """Metric values as a higher-is-better vector."""
    return tuple(v if mode == "max" else -v for v, mode in zip(values, modes, strict=True))


def hypervolume(points: Sequence[Vector], ref: Vector) -> float:
    """The volume dominated by ``points`` and dominating ``ref`` (higher is better; points not strictly
    better than ``ref`` in every objective add nothing). Exact: a sweep in 2-D, slicing on the last
    objective above (fine for the fronts of a population)."""
    pts = [tuple(p) for p in points if all(x > r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return max(p[0] for p in pts) - ref[0]
    if len(ref) == 2:
        total, best_y = 0.0, ref[1]
        for x, y in sorted(pts, reverse=True):  # x falling: each point adds the strip above what is covered
            if y > best_y:
                total += (x - ref[0]) * (y - best_y)
                best_y = y
        return total
    levels = sorted({p[-1] for p in pts}, reverse=True)
    total = 0.0
    for upper, lower in zip(levels, [*levels[1:], ref[-1]], strict=True):
        slab = [p[:-1] for p in pts if p[-1] >= upper]
        total += hypervolume(slab, ref[:-1]) * (upper - lower)
    return total
