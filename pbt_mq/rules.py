"""The PBT rules, as pure functions of (population snapshot, member, rng).

A snapshot is the leaderboard the arbiter read: ``[(member, score), ...]`` with
finite scores only, higher is better (the arbiter negates for mode = "min").
A member absent from it (no checkpoint yet, or a NaN/inf score) ranks last and is
never a donor. By default (``ties = "strict"``) a member is only replaced by a *strictly*
better one, so a plateau of equal scores never sets off a storm of exploits that rewinds
everyone; ``ties = "rank"`` and ``"random"`` let exact ties exploit (ExploitSpec).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .space import AnySpace, PerturbSpec

Snapshot = Sequence[tuple[str, float]]


@dataclass(frozen=True)
class ExploitSpec:
    rule: str = "truncation"  # "truncation" | "tournament" | "none"
    quantile: float = 0.2
    ties: str = "strict"  # "strict": equal scores never exploit; "rank": as in ZREVRANGE; "random": a fair draw


@dataclass(frozen=True)
class ExploreSpec:
    rule: str = "perturb"  # "perturb" | "resample" | "none"
    resample_probability: float = 0.25
    perturb: PerturbSpec = field(default_factory=PerturbSpec)


def sort_snapshot(entries: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Best first, in Redis's ZREVRANGE order (ties: member id descending), finite scores only.

    The arbiter picks donors by index into the sorted set itself, so the pure rules must
    order exactly as Redis does for a decision to be replayable from its snapshot.
    """
    finite = [(m, float(s)) for m, s in entries if math.isfinite(float(s))]
    finite.sort(key=lambda e: e[0], reverse=True)
    finite.sort(key=lambda e: -e[1])  # stable: equal scores keep member-descending order
    return finite


def truncation_size(n: int, quantile: float) -> int:
    """How many members form the top (and the bottom) set: ceil(n*q), at most n//2."""
    return min(int(math.ceil(n * quantile)), n // 2)


def exploit(
    snapshot: Snapshot, member: str, score: float, spec: ExploitSpec, rng: random.Random
) -> str | None:
    """Return the donor ``member`` should copy, or None to keep training as it is.

    One uniform draw ``u`` is always taken first (the arbiter's Lua script receives it), then:
    truncation: the member is in the bottom set when fewer than k members are strictly worse;
    it copies the ``int(u * c)``-th of the c = min(k, #strictly better) best members.
    tournament: the opponent is the ``int(u * (n - 1))``-th other member, copied if strictly better.
    With ``ties = "rank"`` an equal score counts as better for the member ranked higher in
    ZREVRANGE order (the larger id): exactly symmetric members (the paper's toy) still exploit,
    but always the same one copies. ``ties = "random"`` breaks a tie by the same draw ``u``, so
    no member is favoured: truncation places the member at a uniformly random position among
    the t others tied with it (the first ``j = int(u * (t + 1))`` of them, in ZREVRANGE order,
    rank above it) and picks the donor with what is left of the draw, ``u * (t + 1) - j``
    (uniform again, independent of j); tournament picks the opponent with ``int(u * (n - 1))``
    and, on a tie, copies it when the rest of the draw is below 0.5. No extra draw is taken,
    so the rng stream (and explore after it) is the same for every ``ties``.
    """
    if spec.rule == "none":
        return None
    u = rng.random()
    others = sort_snapshot([(m, s) for m, s in snapshot if m != member])
    own = score if math.isfinite(score) else -math.inf
    coin = 0.0  # tournament, ties = "random": the rest of the draw after the opponent's index
    above: set[str] = set()  # truncation, ties = "random": the tied others drawn to rank above the member

    def beats(m: str, s: float) -> bool:  # does other member m (score s) outrank this member?
        if s != own or spec.ties == "strict" or not math.isfinite(own):
            return s > own
        if spec.ties == "random":
            return m in above if spec.rule == "truncation" else coin < 0.5
        return m > member  # ties = "rank": ZREVRANGE order, member id descending

    if spec.rule == "tournament":
        if not others:
            return None
        scaled = u * len(others)
        index = int(scaled)
        coin = scaled - index
        opponent, opp_score = others[index]
        return opponent if beats(opponent, opp_score) else None
    if spec.rule != "truncation":
        raise ValueError(f"unknown exploit rule {spec.rule!r}")
    if spec.ties == "random" and math.isfinite(own):
        tied = [m for m, s in others if s == own]  # in ZREVRANGE order
        scaled = u * (len(tied) + 1)
        j = int(scaled)
        u = scaled - j
        above = set(tied[:j])
    k = truncation_size(len(others) + 1, spec.quantile)
    better = sum(1 for m, s in others if beats(m, s))
    worse = sum(1 for m, s in others if not beats(m, s) and (s != own or spec.ties != "strict"))
    candidates = min(k, better)
    if worse >= k or candidates == 0:
        return None
    return others[int(u * candidates)][0]


def explore(
    hparams: dict[str, Any],
    spaces: dict[str, AnySpace],
    spec: ExploreSpec,
    rng: random.Random,
) -> tuple[dict[str, Any], list[str]]:
    """Mutate each tuned hyperparameter independently; return the values and what was done.

    Ops read like ``lr: 0.01 --(x0.8)--> 0.008`` so a lineage log explains itself.
    """
    if spec.rule == "none":
        return dict(hparams), []
    new = dict(hparams)
    ops: list[str] = []
    for name in sorted(spaces):
        space = spaces[name]
        old = hparams.get(name)
        if old is None or not space.contains(old):
            value, how = space.sample(rng), "resample"
        elif spec.rule == "resample" or rng.random() < spec.resample_probability:
            value, how = space.sample(rng), "resample"
        else:
            value, how = space.perturb(old, rng, spec.perturb)
        new[name] = value
        ops.append(f"{name}: {fmt(old)} --({how})--> {fmt(value)}")
    return new, ops


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value) if isinstance(value, str) else str(value)


def decision_rng(seed: int, member: str, seq: int) -> random.Random:
    """The rng of one decision: a pure function of (experiment seed, member, seq).

    String seeding hashes with sha512, so it is stable across processes and
    machines (unlike ``hash()``), which makes every decision replayable.
    """
    return random.Random(f"pbt-mq/{seed}/{member}/{seq}")
