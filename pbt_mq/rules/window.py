"""``exploit.window = k``: rank a member on the mean of its last k scores, not on one noisy measurement.

A window follows the lineage: a member that continues adds its new score to the window of the checkpoint
it continued from; one that exploits starts from its donor's window (the scores that checkpoint earned), so
both windows end at aligned ready points and a copied checkpoint keeps its record. ``decide.lua`` keeps it
(``pbt:{EXP}:windows``, and the member's ``window`` field for its running segment); these functions mirror
the script exactly (the same parse, the same sum in the same order, ``%.17g`` both ways), which is what
``tests/control/test_decide_parity.py`` checks and replay relies on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def parse(raw: bytes | str | None) -> list[float]:
    """A stored window, oldest first; anything that is not a finite number (written by hand) is skipped."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else (raw or "")
    out = []
    for part in text.split():
        try:
            x = float(part)
        except ValueError:
            continue
        if math.isfinite(x):
            out.append(x)
    return out


def encode(values: Sequence[float]) -> str:
    return " ".join(f"{v:.17g}" for v in values)


def extend(start: Sequence[float], score: float, k: int) -> tuple[list[float], float]:
    """The window after ``score`` joins ``start`` (its last ``k`` kept) and the mean the member ranks on."""
    kept = [*start, score][-k:]
    total = 0.0
    for v in kept:
        total += v
    return kept, float(f"{total / len(kept):.17g}")
