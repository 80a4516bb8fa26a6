"""Shared helpers for tests that drive real processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import redis

from pbt_mq.core.ids import entry_ms, member_ids
from pbt_mq.core.keys import Keys
from pbt_mq.core.model import Action, Lineage, Member
from pbt_mq.state.lineage import records

ROOT = Path(__file__).resolve().parent.parent
TOY = str(ROOT / "workers" / "toy.toml")
# The paper's two starting points and two weaker copies: each member still shrinks only one
# coordinate, so without exploit/explore no member can pass Q = 1.2 - 0.81 = 0.39. (Exactly
# the paper's pair scores identically at equal steps, and equal scores never exploit.)
PAPER_INIT_4 = "population.initial=[{h0=1.0,h1=0.0},{h0=0.0,h1=1.0},{h0=0.5,h1=0.0},{h0=0.0,h1=0.5}]"


def pbt(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pbt_mq", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def launch(redis_url: str, store: str, *sets: str, file: str = TOY) -> str:
    args = ["launch", file, "--redis", redis_url, "--store", store]
    for s in sets:
        args += ["--set", s]
    res = pbt(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def status(redis_url: str, exp: str) -> dict:
    res = pbt("status", exp, "--json", "--redis", redis_url)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def lineage_counts(r: redis.Redis, exp: str) -> Counter:
    return Counter((rec.member, int(rec.seq)) for rec in records(r, exp))


def event_counts(r: redis.Redis, exp: str) -> Counter:
    entries = r.xrange(Keys(exp).events, "-", "+")
    return Counter((f[b"member"].decode(), int(f[b"seq"])) for _, f in entries)


def early_decisions(r: redis.Redis, exp: str, recs: list[Lineage]) -> list[tuple[str, int, int]]:
    """Synchronous rounds by steps: the decisions (member, seq, step) of a member at step R for which,
    between its report of R and the decision, there was no moment when every other member stood at R or
    past it. A member stands where its last ready event put it, or where its last replacement restarted
    it (a donor's step, or 0), or nowhere once it failed for good; a failed segment's event, which
    carries the step the segment *started* from, moves it nowhere. Times are stream ids' milliseconds
    (one node: one clock). A member replaced after its round was complete, before the decision's
    transaction ran, does not make that decision early."""
    moves: list[tuple[int, str, int]] = []  # (ms, member, where it stands from then on)
    for entry_id, f in r.xrange(Keys(exp).events):
        if not f.get(b"failed"):
            moves.append((entry_ms(entry_id), f[b"member"].decode(), int(f[b"step"])))
    for rec in recs:
        if rec.action is Action.REPLACED:
            moves.append((entry_ms(rec.id), rec.member, (rec.parent_step or 0) if rec.parent else 0))
        elif rec.action is Action.FAILED:  # out of the rounds: it holds none back
            moves.append((entry_ms(rec.id), rec.member, 1 << 62))
    moves.sort()
    early = []
    for rec in recs:
        if rec.action not in (Action.CONTINUE, Action.EXPLOIT):
            continue
        at = {m: 0 for _, m, _ in moves}
        complete = False
        for ms, m, step in moves:
            if ms > entry_ms(rec.id):
                break
            at[m] = step
            if m == rec.member:
                complete = False  # its report of the step now decided is its last move before the decision
            if at[rec.member] == rec.step and all(s >= rec.step for o, s in at.items() if o != rec.member):
                complete = True
        if not complete:
            early.append((rec.member, int(rec.seq), rec.step))
    return early


# ---------------------------------------------------------------- issue 23's rules, checked from the log

WINNING = ("population.size=6", "stop.steps=64", "trainable_args.delay_s=0.005",
           "population.initial=[{h0=1.0,h1=0.0},{h0=0.0,h1=1.0},{h0=0.5,h1=0.0},{h0=0.0,h1=0.5},"
           "{h0=0.2,h1=0.2},{h0=0.1,h1=0.3}]")
TTEST_SETS = (*WINNING, "exploit.rule=ttest", "exploit.window=3", "exploit.level=0.5", "explore.rule=crossover")
WINDOW_SETS = (*WINNING, "exploit.window=3", "exploit.synch=true", "exploit.quantile=0.5",
               "exploit.subpopulations=[1, 2, 0]")


def window_errors(recs: list[Lineage], k: int) -> list[str]:
    """Every member's place on a board it saw must be the mean of the last k scores along its ancestry
    (its own segments and, across an exploit, its donor's): what decide.lua keeps (toy: mode max)."""
    from pbt_mq.state.lineage import ancestry

    bad = []
    for rec in recs:
        own = dict(rec.leaderboard or []).get(rec.member)
        if own is None or rec.action not in (Action.CONTINUE, Action.EXPLOIT):
            continue
        chain = [r.score for r in ancestry(recs, rec.ckpt_key)][-k:]
        total = 0.0
        for s in chain:
            total += s
        if own != total / len(chain):
            bad.append(f"{rec.member} seq {rec.seq}: board {own}, window {chain}")
    return bad


def subpopulation_errors(recs: list[Lineage], periods: tuple[int, ...], ready_steps: int) -> list[str]:
    """Exploits only at a member's period, from a member that exploits at most as often (one-way migration)."""
    def period(m: str) -> int:
        return periods[int(m[1:]) % len(periods)]

    bad = []
    for rec in recs:
        if rec.action is not Action.EXPLOIT:
            continue
        p, q = period(rec.member), period(rec.parent)
        if p == 0 or (rec.step // ready_steps) % p:
            bad.append(f"{rec.member} (period {p}) exploited at step {rec.step}")
        if not (q == 0 or q >= p):
            bad.append(f"{rec.member} (period {p}) copied {rec.parent} (period {q})")
    return bad


SEGMENTS, STEPS = 3, 10  # write_history's shape


def write_history(r, exp: str, population: int, seed: int = 0) -> dict[str, float]:
    """SEGMENTS segments per member, round by round; from the second round on, a tenth of the members
    copy a random member's checkpoint (an exploit). Returns each member's last score."""
    rng, k = random.Random(seed), Keys(exp)
    members = member_ids(population)
    ckpt: dict[str, str] = {}
    score: dict[str, float] = {}
    for seg in range(SEGMENTS):
        pipe = r.pipeline(transaction=False)
        before = dict(ckpt)  # this round starts from the last round's checkpoints
        for m in members:
            start = before.get(m, "")
            action = Action.CONTINUE
            parent = ""
            if seg and rng.random() < 0.1:
                parent = m
                while parent == m:
                    parent = rng.choice(members)
                start, action = before[parent], Action.EXPLOIT
            score[m] = rng.uniform(0, 1) + seg
            key = f"{exp}/{m}/{seg}"
            rec = Lineage(member=m, seq=seg, start_step=seg * STEPS, step=(seg + 1) * STEPS, score=score[m],
                          action=action, start_key=start, ckpt_key=key, hparams={"h0": rng.random(), "h1": rng.random()},
                          parent=parent, parent_step=seg * STEPS if parent else None, worker="w1")
            pipe.xadd(k.lineage, rec.encode())
            ckpt[m] = key
            if seg == SEGMENTS - 1:
                pipe.hset(k.member(m), mapping=Member.fields(score=score[m], scored_step=(seg + 1) * STEPS))
                pipe.zadd(k.scores, {m: score[m]})
        pipe.execute()
    return score
