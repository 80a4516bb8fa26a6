"""The lineage log (``pbt:{EXP}:lineage``, its oldest part archived in the store): one record per
decision, append-only, replayable.

Each record says: member M trained segment ``seq`` from checkpoint ``start_key`` (at
``start_step``) with ``hparams`` to ``step``, wrote ``ckpt_key``, scored ``score``; then the
arbiter chose ``action``. Following ``start_key`` back through ``ckpt_key``s gives the exact
ancestry of any checkpoint across exploits. ``observe.lineage`` turns records into the views
people read; ``replay_decisions`` re-derives every decision from them.
"""

from __future__ import annotations

import math
from typing import Any

from pbt_mq.config.experiment import Experiment
from pbt_mq.core.ids import replacement_seed
from pbt_mq.core.model import Action, Lineage
from pbt_mq.core.space import sample_all
from pbt_mq.rules.base import ExploreContext, decision_rng
from pbt_mq.rules.registry import exploit_rule, explore_rule
from pbt_mq.state import archive


def records(r: Any, exp: str, after: str | None = None) -> list[Lineage]:
    """The typed records, oldest first, those moved to the store (``state.archive``) and those still in
    Redis alike: every reader goes through here. With ``after`` (an entry id) only the newer ones."""
    return archive.read(r, exp, after)


def by_checkpoint(recs: list[Lineage]) -> dict[str, Lineage]:
    return {rec.ckpt_key: rec for rec in recs if rec.ckpt_key}


def ancestry(recs: list[Lineage], ckpt_key: str) -> list[Lineage]:
    """The segments that produced ``ckpt_key``, oldest first."""
    by_ckpt = by_checkpoint(recs)
    chain: list[Lineage] = []
    cur = by_ckpt.get(ckpt_key)
    seen: set[str] = set()
    while cur is not None and cur.ckpt_key not in seen:
        seen.add(cur.ckpt_key)
        chain.append(cur)
        cur = by_ckpt.get(cur.start_key)
    return chain[::-1]


def typed(rec: Lineage) -> dict[str, Any]:
    """The fields every view of a segment shares (a schedule entry)."""
    return {
        "member": rec.member,
        "seq": rec.seq,
        "from_step": rec.start_step,
        "to_step": rec.step,
        "hparams": rec.hparams or {},
        "score": rec.score,
    }


def schedule(chain: list[Lineage]) -> list[dict[str, Any]]:
    """The hyperparameter schedule of a chain: which values were used from which step."""
    return [typed(rec) for rec in chain]


def format_schedule(sched: list[dict[str, Any]]) -> str:
    lines = []
    prev_member = None
    for s in sched:
        hp = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(s["hparams"].items()))
        tag = "" if prev_member in (None, s["member"]) else f"  <- copied {prev_member}'s weights"
        lines.append(f"  steps {s['from_step']:>6}-{s['to_step']:<6} {s['member']}  {hp}  score={s['score']:.4g}{tag}")
        prev_member = s["member"]
    return "\n".join(lines)


# ---------------------------------------------------------------- replay


def replay_decisions(cfg: Experiment, recs: list[Lineage]) -> list[str]:
    """Re-derive every recorded exploit/explore decision from the log; return the mismatches.

    A decision is a pure function of (the leaderboard it saw, member, seeded rng). Records of
    populations up to 64 carry that leaderboard, so the donor and the mutation are re-derived
    exactly; larger ones carry the counts the rule used (n, worse, better, k), which re-derive
    whether the member exploited and the mutation it got.
    """
    by_ckpt = by_checkpoint(recs)
    bad = []
    for rec in recs:
        if rec.action in (Action.CONTINUE, Action.EXPLOIT):
            problem = _replay_one(cfg, rec, by_ckpt, recs)
        elif rec.action is Action.REPLACED:
            problem = _replay_replacement(cfg, rec, by_ckpt, recs)
        else:
            continue
        if problem:
            bad.append(f"{rec.member} seq {rec.seq}: {problem}")
    return bad


def _replay_one(cfg: Experiment, rec: Lineage, by_ckpt: dict[str, Lineage], recs: list[Lineage]) -> str | None:
    score = cfg.higher_is_better(rec.score) if math.isfinite(rec.score) else math.nan
    rng = decision_rng(cfg.seed, rec.member, rec.seq)
    chosen = rec.chosen_donor
    board = rec.leaderboard
    if cfg.multi or cfg.exploit.window > 1:  # its own place: its Pareto score, or its window's mean, on that board
        score = dict(board or []).get(rec.member, math.nan)
    if cfg.exploit.in_burn_in(rec.step):  # no rule ran, no draw was taken
        return f"log says donor {chosen} at step {rec.step}, in the burn-in" if chosen else None
    due = _due(cfg, rec)
    if due is None:
        return None  # ready by seconds, ranked on the latest scores: the log keeps no ready point to tell
    if not due:  # exploit.subpopulations: not its turn, no rule ran, no draw was taken
        return f"log says donor {chosen} at step {rec.step}, not a ready point its sub-population exploits" if chosen \
            else None
    if board is not None:
        donor = _choose(cfg, rec, board, score, rng)
        if donor != chosen:
            return f"log says donor {chosen}, replay picks {donor}"
    elif rec.n is not None and exploit_rule(cfg.exploit).lua is not None and not cfg.multi:  # else: needs its board
        would = _exploits_by_counts(cfg, rec, rng)
        if would != (chosen is not None):
            return f"log says donor {chosen}, the counts say {'a donor' if would else 'none'}"
    else:
        return None
    if rec.action is not Action.EXPLOIT:
        return None
    hp = _explored(cfg, rec, by_ckpt, recs, rng)
    if isinstance(hp, str):
        return hp
    if hp != rec.next_hparams:
        return f"log says {rec.next_hparams}, replay gives {hp}"
    return None


def _explored(cfg: Experiment, rec: Lineage, by_ckpt: dict[str, Lineage], recs: list[Lineage],
              rng: Any) -> dict[str, Any] | str:
    """The donor's values explored as the arbiter did (an exploit, or a replacement from a donor); a
    string says why it cannot be re-derived."""
    source = by_ckpt.get(rec.next_start_key)
    if source is None:
        return f"donor checkpoint {rec.next_start_key} has no lineage record"
    rule = explore_rule(cfg.explore)
    ctx = ExploreContext(cfg.spaces, cfg.population, rec.member, rec.parent_step or 0, cfg.higher_is_better,
                         rule.replay_history(recs, rec.ops or []))
    return rule.explore(source.hparams or {}, ctx, rng)[0]


def _replay_replacement(cfg: Experiment, rec: Lineage, by_ckpt: dict[str, Lineage], recs: list[Lineage]) -> str | None:
    """A failed segment's replacement (control.replace): the rule's pick on the board with a NaN score (the
    donor, or declined for one below the stop), then the donor's values explored, or a fresh draw and seed."""
    rng = decision_rng(cfg.seed, rec.member, rec.seq)
    rule = exploit_rule(cfg.exploit)
    if cfg.exploit.in_burn_in(rec.step) or (rule.lua == "none" and not cfg.multi):
        pick = None  # no rule ran, no draw was taken
    elif rec.leaderboard is not None:
        pick = _choose(cfg, rec, rec.leaderboard, math.nan, rng)
    else:
        return None  # a board over 64 members: the log keeps too little to re-derive it
    if pick not in (rec.parent or None, rec.declined_donor) and not (pick is None and rec.declined_donor is None):
        return f"log says donor {rec.parent or None} (declined {rec.declined_donor}), replay picks {pick}"
    if rec.parent:
        hp = _explored(cfg, rec, by_ckpt, recs, rng)
        if isinstance(hp, str):
            return hp
    else:
        hp = sample_all(cfg.spaces, rng)
        if rec.seed != replacement_seed(cfg.seed, rec.member, rec.seq):
            return f"log says seed {rec.seed}, replay gives {replacement_seed(cfg.seed, rec.member, rec.seq)}"
    if hp != rec.next_hparams:
        return f"log says {rec.next_hparams}, replay gives {hp}"
    return None


def _choose(cfg: Experiment, rec: Lineage, board: list[tuple[str, float]], score: float, rng: Any) -> str | None:
    """The rule re-run on the board a decision saw (a windowed rule, ttest, on the windows it compared)."""
    rule = exploit_rule(cfg.exploit)
    if rule.windowed:
        compared = rec.windows or {}
        return rule.choose_windowed(board, rec.member, rng, lambda m: compared.get(m, []))
    return rule.choose(board, rec.member, score, rng)


def _due(cfg: Experiment, rec: Lineage) -> bool | None:
    """Was the member's sub-population due to exploit at this decision (None: the log cannot tell)?"""
    if not cfg.exploit.subpopulations:
        return True
    point = rec.step if cfg.ready.steps is not None else rec.board_at
    if point is None:
        return None
    return cfg.exploit.due(rec.member, point // (cfg.ready.steps or 1))


def _exploits_by_counts(cfg: Experiment, rec: Lineage, rng: Any) -> bool:
    """Truncation's verdict from the recorded counts (tournament needs the opponent's score)."""
    if cfg.exploit.rule == "none":
        return False
    rng.random()  # the donor draw, consumed as the arbiter did
    if cfg.exploit.rule == "tournament":  # its draw is not re-derivable from counts: the log's pick stands
        return rec.chosen_donor is not None
    worse, better, k = rec.worse or 0, rec.better or 0, rec.k or 0
    return worse < k and min(k, better) > 0
