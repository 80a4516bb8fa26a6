"""An experiment's lineage stream, followed: only the entries added since the last read, a bounded
number per read, kept as compact *nodes* the page draws every chart from.

A node is one decided segment: member ``m``, seq ``q``, steps ``a``→``b``, score ``y`` (None when
not finite), hyperparameters ``h``, the decision ``x`` (continue | exploit | done | failed), and
``p``, the node whose checkpoint it started from (-1 for a fresh start). ``p`` makes the nodes a
tree: a member's curve, every exploit (``p`` on another member's lane) and any checkpoint's
ancestry are all read from it. Node ``i`` is the ``i``-th lineage record (archived ones first), so
a client that holds ``n`` nodes asks for the ones from ``n`` on. Every node stays in memory while
the experiment is shown (a few hundred bytes each: ~50 MB for 100,000 decisions).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, deque
from typing import Any

from pbt_mq.core.ids import entry_ms
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, Lineage
from pbt_mq.observe.lineage import explain, phases
from pbt_mq.state.archive import read_archived
from pbt_mq.store.base import StoreError

RATE_WINDOW_MS = 10_000


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


class LineageLog:
    """Everything read so far from one ``pbt:{EXP}:lineage``; ``poll`` reads what is new."""

    def __init__(self, exp: str) -> None:
        self.exp = exp
        self.key = Keys(exp).lineage
        self.last_id: str | None = None
        self.nodes: list[dict[str, Any]] = []
        self.recs: list[Lineage] = []  # the records, less the board snapshot (the largest field)
        self.node_of: dict[str, int] = {}  # checkpoint key -> the node that wrote it
        self.latest: dict[str, int] = {}  # member -> its newest node with a checkpoint
        self.by_member: dict[str, list[int]] = {}  # member -> its nodes, oldest first
        self.last_exploit: dict[str, dict[str, Any]] = {}
        self.actions: Counter[str] = Counter()
        self.recent: deque[int] = deque()  # entry times (ms) inside the rate window
        self.archived: deque[Lineage] | None = None  # archived records not added yet (None: not read yet)
        self.archive_error: str | None = None

    def poll(self, r: Any, batch: int) -> bool:
        """Read at most ``batch`` new entries; True when more are waiting. The records the arbiters
        moved to the store (``[lineage] redis_window``) come first, read once; if the store cannot be
        read they are left out, and ``archive_error`` says so."""
        if self.archived is None:
            try:
                self.archived = deque(read_archived(r, self.exp))
            except StoreError as exc:
                self.archived, self.archive_error = deque(), f"older records in the store could not be read: {exc}"
        if self.archived:
            for _ in range(min(batch, len(self.archived))):
                self.add(self.archived.popleft())
            return True
        entries = r.xrange(self.key, "-" if self.last_id is None else f"({self.last_id}", "+", count=batch)
        for entry_id, fields in entries:
            self.add(Lineage.from_entry(entry_id, fields))
        return len(entries) >= batch

    def add(self, rec: Lineage) -> None:
        self.last_id = rec.id
        i = len(self.nodes)
        action = str(rec.action) if rec.action else "?"
        self.actions[action] += 1
        node: dict[str, Any] = {
            "i": i, "m": rec.member, "q": rec.seq, "a": rec.start_step, "b": rec.step, "y": finite(rec.score),
            "h": rec.hparams or {}, "x": action, "p": self.node_of.get(rec.start_key, -1) if rec.start_key else -1,
            "w": rec.worker, "t": entry_ms(rec.id),
        }
        if rec.action is Action.EXPLOIT:
            node["d"] = rec.parent
            node["o"] = list(rec.ops or [])
            self.last_exploit[rec.member] = {"parent": rec.parent, "step": rec.step, "parent_step": rec.parent_step or 0}
        self.nodes.append(node)
        self.by_member.setdefault(rec.member, []).append(i)
        self.recs.append(dataclasses.replace(rec, snapshot=None))
        if rec.ckpt_key:
            self.node_of[rec.ckpt_key] = i
            self.latest[rec.member] = i
        self.recent.append(node["t"])

    def rate(self, now_ms: int) -> float:
        """Decisions per second over the last RATE_WINDOW_MS (entries read so far)."""
        while self.recent and self.recent[0] < now_ms - RATE_WINDOW_MS:
            self.recent.popleft()
        if not self.recent:
            return 0.0
        return len(self.recent) / (RATE_WINDOW_MS / 1000)

    def since(self, cursor: int, limit: int) -> list[dict[str, Any]]:
        return self.nodes[max(cursor, 0): max(cursor, 0) + limit]

    def subset(self, members: list[str]) -> list[dict[str, Any]]:
        """The nodes of ``members`` and every node their newest checkpoints descend from, in index order:
        what a large population's page draws (its node ids stay the global ones, so ``p`` still points)."""
        keep: set[int] = set()
        walked: set[int] = set()
        for m in members:
            for i in self.by_member.get(m, ()):
                keep.add(i)
                if self.nodes[i]["p"] >= 0:
                    keep.add(self.nodes[i]["p"])  # where it started from: an exploit's donor point
            i = self.latest.get(m, -1)
            while i >= 0 and i not in walked:  # its newest checkpoint's ancestry, across other members' lanes
                walked.add(i)
                i = self.nodes[i]["p"]
        keep |= walked
        return [self.nodes[i] for i in sorted(keep)]

    def ancestry(self, member: str) -> dict[str, Any] | None:
        """``pbt lineage --json``'s segments and phases for ``member``'s newest checkpoint (None: none yet)."""
        i = self.latest.get(member)
        if i is None:
            return None
        segs = explain(self.recs, self.recs[i].ckpt_key)
        return {"member": member, "ckpt_key": self.recs[i].ckpt_key, "segments": segs, "phases": phases(segs)}
