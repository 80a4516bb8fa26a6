"""Markdown for ``pbt study``'s report: tables, median [IQR] cells, verdict lines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pbt_mq.tools.study.analysis import spread


def fmt_spread(xs: Sequence[float], digits: int = 4) -> str:
    med, lo, hi = spread(xs)
    if math.isnan(med):
        return "-"
    return f"{med:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool, text: str) -> str:
    return f"- **{'met' if ok else 'NOT met'}**: {text}"
