"""The paper's noise-robust selection for RL: ``exploit.rule = "ttest"``.

Jaderberg et al. (2017, section 4.1): a member draws one other member uniformly at random and
compares their last k scores (here ``exploit.window = k``, kept per member along its lineage by
``decide.lua``; the other's is its latest window, so the two end at the same ready point only with
``exploit.synch``, as the paper's were its agents' latest episodes); it copies the other only if the
other's mean is higher *and* Welch's t-test rejects equal means at ``exploit.level``. One noisy
evaluation therefore never sets off an exploit, at the cost of exploiting less often than
truncation: a member far behind still copies at once, one slightly behind keeps training.

The rule is pure: the opponent is the ``int(u * (n - 1))``-th other member of the board (best
first), ``u`` the decision's first draw, exactly as the tournament rule picks; the windows it
compared are kept in the lineage record, from which ``state.lineage.replay_decisions`` re-runs it.
It runs in Python (``control.pyrule``) on a board of at most ``rules.plugins.BOARD_MAX`` members.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from pbt_mq.rules.base import ExploitRule, Snapshot, sort_snapshot

Windows = Callable[[str], Sequence[float]]


class TTest(ExploitRule):
    """Copy a random other member when its window of scores is better by Welch's t-test."""

    name = "ttest"
    lua = None
    windowed = True

    def choose(self, snapshot: Snapshot, member: str, score: float, rng: random.Random) -> str | None:
        """Without the windows (a caller that knows only the board): means alone, no test."""
        return self.choose_windowed(snapshot, member, rng, lambda m: [s for x, s in snapshot if x == m])

    def choose_windowed(self, snapshot: Snapshot, member: str, rng: random.Random, windows: Windows) -> str | None:
        u = rng.random()  # always first, as the other rules
        others = sort_snapshot([(m, s) for m, s in snapshot if m != member])
        if not others:
            return None
        opponent = others[int(u * len(others))][0]
        mine, theirs = list(windows(member)), list(windows(opponent))
        return opponent if better(theirs, mine, self.spec.level) else None


def better(a: Sequence[float], b: Sequence[float], level: float) -> bool:
    """Is sample ``a`` better (higher mean) than ``b``, significantly at ``level`` (Welch, two-sided)?

    An empty ``b`` (the member has no usable score) loses to any ``a``; fewer than two values on
    either side cannot be tested, so the means decide only when neither side varies."""
    a = [x for x in a if math.isfinite(x)]
    b = [x for x in b if math.isfinite(x)]
    if not a:
        return False
    if not b:
        return True
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if ma <= mb:
        return False
    return welch_p(a, b) < level


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided p-value of Welch's t-test for equal means (0 when neither sample varies and the
    means differ). A single value counts as a sample without variance: the other side's carries the test."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1) if na > 1 else 0.0
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1) if nb > 1 else 0.0
    se2 = va / na + vb / nb
    if se2 <= 0.0:
        return 0.0 if ma != mb else 1.0
    t = abs(ma - mb) / math.sqrt(se2)
    parts = [(v / n) ** 2 / (n - 1) for v, n in ((va, na), (vb, nb)) if n > 1 and v > 0.0]
    df = se2 ** 2 / sum(parts) if parts else 1.0
    return student_sf2(t, df)


def student_sf2(t: float, df: float) -> float:
    """P(|T| > t) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Lentz's continued fraction)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _cf(a, b, x) / a
    return 1.0 - front * _cf(b, a, 1.0 - x) / b


def _cf(a: float, b: float, x: float) -> float:
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = tiny if abs(d) < tiny else d
        d = 1.0 / d
        c = 1.0 + num / c
        c = tiny if abs(c) < tiny else c
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return f - 1.0
