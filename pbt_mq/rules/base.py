"""What an exploit or explore rule is, and the registry that names them.

A rule is pure: a function of (the leaderboard the arbiter read, the member, a seeded
``random.Random``) and nothing else, so every decision replays from the lineage log.

Lifecycle, the same for built-ins and plug-ins (config validation, the arbiter and
``state.lineage.replay_decisions`` all go through ``rules.registry``):

1. ``pbt launch`` parses the experiment file; the rule's name must be in the registry and its
   requirements importable (``ConfigError`` otherwise).
2. An arbiter builds the rule once per experiment from its spec.
3. Per ready event the arbiter makes the decision's rng, ``decision_rng(seed, member, seq)``.
   Exploit: the first draw ``u = rng.random()`` goes to ``decide.lua`` (built-ins, O(log n) in
   the sorted set) or the board is read and ``ExploitRule.choose`` is called; it returns the
   donor or None. Explore (only after an exploit): ``ExploreRule.explore`` mutates the donor's
   hyperparameters with the same rng, reading ``ExploreContext.history`` if it asked for any.
4. The lineage record keeps the board (``snapshot``) and the ops, so a replay re-derives both.

A snapshot is ``[(member, score), ...]`` with finite scores only, higher is better (the
arbiter negates for mode = "min"). A member absent from it (no checkpoint yet, a NaN/inf
score) ranks last and is never a donor.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pbt_mq.core.model import Lineage
from pbt_mq.core.space import AnySpace, PerturbSpec

Snapshot = Sequence[tuple[str, float]]


@dataclass(frozen=True)
class ExploitSpec:
    """``[exploit]``: which rule picks donors, and its parameters."""

    rule: str = "truncation"
    quantile: float = 0.2
    ties: str = "strict"  # "strict": equal scores never exploit; "rank": as in ZREVRANGE; "random": a fair draw
    compare: str = "step"  # "step": rank against the others' scores at the same ready point; "latest": their last
    burn_in_steps: int = 0  # below this step a member is neither exploited nor a donor (nor on any board)
    synch: bool = False  # decide a ready point only once every live member reported it (control.synch)
    window: int = 1  # rank on the mean of a member's last k scores along its lineage (1: its last score)
    level: float = 0.05  # ttest: copy only when Welch's t-test finds the other better at this level
    subpopulations: tuple[int, ...] = ()  # member i exploits every p-th ready point, p = this[i % len] (0: never)

    def in_burn_in(self, step: int) -> bool:
        """Is a member at ``step`` still burning in: not exploited, and no donor?"""
        return step < self.burn_in_steps

    def period(self, member: str) -> int:
        """How often ``member`` may exploit, in ready points: 1 every one, 0 never (``subpopulations``)."""
        if not self.subpopulations:
            return 1
        return self.subpopulations[member_index(member) % len(self.subpopulations)]

    def due(self, member: str, ready_index: int) -> bool:
        """May ``member`` exploit at its ``ready_index``-th ready point?"""
        p = self.period(member)
        return p == 1 or (p > 1 and ready_index % p == 0)

    def may_copy(self, member: str, donor: str) -> bool:
        """Sub-populations migrate one way, from slower to faster: a member copies only a donor that
        exploits at most as often (0, never, is the slowest), so greed cannot overwrite the slow ones."""
        p, q = self.period(member), self.period(donor)
        return q == 0 or (p != 0 and q >= p)

    @property
    def python(self) -> bool:
        """Does deciding need the board in Python (sub-populations filter it)?"""
        return bool(self.subpopulations)


def member_index(member: str) -> int:
    """The number in a member id (``m007`` -> 7; an id without one counts as 0)."""
    digits = "".join(c for c in member if c.isdigit())
    return int(digits) if digits else 0


@dataclass(frozen=True)
class ExploreSpec:
    """``[explore]``: which rule mutates an inherited configuration, and its parameters."""

    rule: str = "perturb"
    resample_probability: float = 0.25
    perturb: PerturbSpec = field(default_factory=PerturbSpec)


@dataclass(frozen=True)
class ExploreContext:
    """What an explore rule may know besides the donor's values and the rng."""

    spaces: dict[str, AnySpace]
    population: int
    member: str  # the member that exploits
    donor_step: int  # the step of the checkpoint it inherits
    higher_is_better: Callable[[float], float]  # metric -> leaderboard score
    history: Sequence[Lineage] = ()  # the newest ``ExploreRule.history_size`` lineage records, oldest first


class ExploitRule(ABC):
    """Picks the donor a member copies, or None to keep training as it is."""

    name: ClassVar[str]
    lua: ClassVar[str | None] = None  # decide.lua's mode for this rule; None: the arbiter calls choose()
    windowed: ClassVar[bool] = False  # True: the arbiter calls choose_windowed() with the members' score windows

    def __init__(self, spec: ExploitSpec) -> None:
        self.spec = spec

    @abstractmethod
    def choose(self, snapshot: Snapshot, member: str, score: float, rng: random.Random) -> str | None:
        """The donor; ``score`` is the member's own (NaN if unusable). Must take its draws from ``rng`` only."""

    def choose_windowed(self, snapshot: Snapshot, member: str, rng: random.Random,
                        windows: Callable[[str], Sequence[float]]) -> str | None:
        """A ``windowed`` rule's choice, reading any member's last ``exploit.window`` scores from ``windows``."""
        own = dict(snapshot).get(member, math.nan)
        return self.choose(snapshot, member, own, rng)


class ExploreRule(ABC):
    """Mutates the hyperparameters a member inherited; returns them and what was done."""

    name: ClassVar[str]

    def __init__(self, spec: ExploreSpec) -> None:
        self.spec = spec

    def history_size(self, population: int) -> int:
        """How many of the newest lineage records ``explore`` wants in its context (0: none)."""
        return 0

    def replay_history(self, records: Sequence[Lineage], ops: Sequence[str]) -> Sequence[Lineage]:
        """The history a recorded decision saw, found from all ``records`` and its ``ops``."""
        return ()

    @abstractmethod
    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        """New values and ops such as ``lr: 0.01 --(x0.8)--> 0.008``, from ``rng`` only."""


# ---------------------------------------------------------------- shared by the rules


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


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def history_seen(records: Sequence[Lineage], ops: Sequence[str], rule: str) -> Sequence[Lineage]:
    """The lineage records a logged history-reading explore (pb2, crossover) saw: its first op,
    ``RULE: upto=ID count=N ...``, names the newest record it read and how many; replay reads them again."""
    head = next((op for op in ops if op.startswith(f"{rule}: upto=")), None)
    if head is None:
        return ()
    fields = dict(part.split("=", 1) for part in head[len(f"{rule}: "):].split() if "=" in part)
    upto, count = id_key(fields["upto"]), int(fields["count"])
    seen = sorted((rec for rec in records if id_key(rec.id) <= upto), key=lambda rec: id_key(rec.id))
    return seen[-count:] if count > 0 else []

