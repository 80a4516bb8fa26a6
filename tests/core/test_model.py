"""The Redis data model: one codec per record, and every reference to it (keys.py, the README,
docs/redis.md, the Lua scripts) checked against the records, so none can go stale."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pbt_mq.core import keys
from pbt_mq.core.model import (
    RECORDS,
    Action,
    DeadLetter,
    ExperimentState,
    Heartbeat,
    Lineage,
    Member,
    MemberState,
    Meta,
    ScoredCheckpoint,
    TrackingState,
)

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "pbt_mq" / "broker" / "lua"


def test_a_member_round_trips_through_a_real_redis_hash(r):
    fields = Member.fields(state=MemberState.RUNNING, seq=3, step=12, hparams={"lr": 0.1, "opt": "sgd"},
                           cmd=b"\x92\x01\xff", score=math.nan, ckpt_size=10, parent_step=None)
    r.hset("m", mapping=fields)
    m = Member.read(r, "m")
    assert m.state is MemberState.RUNNING and m.seq == 3 and m.step == 12
    assert m.hparams == {"lr": 0.1, "opt": "sgd"} and m.cmd == b"\x92\x01\xff"
    assert math.isnan(m.score) and m.ckpt_size == 10 and m.parent_step is None
    assert m.worker == "" and m.reaped == 0  # absent: the record's defaults
    assert Member.read(r, "m", "seq", "state") == Member(state=MemberState.RUNNING, seq=3)
    assert r.hget("m", "state") == b"running"  # plain text a person can read


def test_a_field_the_model_does_not_know_is_refused_before_redis_sees_it():
    with pytest.raises(KeyError, match="Member has no field 'stat'"):
        Member.fields(stat="running")
    with pytest.raises(KeyError, match="Meta has no field 'sate'"):
        Meta.names("sate")


def test_a_state_this_release_does_not_know_reads_as_absent():
    assert Member.decode({b"state": b"hibernating"}).state is None
    assert MemberState.DONE.ended and not MemberState.READY.ended and ExperimentState.STOPPED.ended


def test_a_lineage_record_round_trips_with_its_entry_id():
    rec = Lineage(member="m001", seq=4, start_step=16, step=20, score=0.5, action=Action.EXPLOIT,
                  hparams={"h0": 1.0}, next_hparams={"h0": 0.8}, parent="m000", parent_step=24,
                  ops=["h0: 1 --(x0.8)--> 0.8"], n=4, worse=0, better=3, k=1, snapshot=[["m000", 1.0], ["m001", 0.5]])
    back = Lineage.from_entry(b"1700000000000-3", rec.encode())
    assert back.id == "1700000000000-3" and back == Lineage(**{**rec.__dict__, "id": back.id})
    assert back.leaderboard == [("m000", 1.0), ("m001", 0.5)] and back.chosen_donor == "m000"
    assert "declined_donor" not in rec.encode()  # unset: not written


def test_a_scored_checkpoint_is_json_decide_lua_can_pass_on():
    c = ScoredCheckpoint("e/m0/000001-s4-ab.pt", "0" * 64, 10, 4, {"lr": 0.1})
    assert ScoredCheckpoint.from_json(c.to_json()) == c


def _listed(doc: str, key: str) -> set[str]:
    """The field names keys.py's docstring lists for ``key``: after its 'core.model.X ...:', to the next key."""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(key + " "))
    body = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 39):
            break
        body.append(line)
    text = " ".join(s.strip() for s in body).split("core.model.", 1)[1]
    return {f.strip() for f in text.split(": ", 1)[1].split(",")}


@pytest.mark.parametrize(("key", "record"), [
    ("pbt:{EXP}:meta", Meta), ("pbt:{EXP}:member:{M}", Member), ("pbt:{EXP}:lineage", Lineage),
    ("pbt:{EXP}:dead", DeadLetter), ("pbt:worker:{ID}", Heartbeat), ("pbt:dead", DeadLetter),
    ("pbt:{EXP}:tracking", TrackingState),
])
def test_the_keys_docstring_lists_exactly_the_records_fields(key, record):
    assert _listed(keys.__doc__, key) == set(record.spec())


def test_readme_and_docs_carry_the_generated_references():
    assert keys.key_table() in (ROOT / "README.md").read_text()
    assert keys.field_reference() in (ROOT / "docs" / "redis.md").read_text()


def test_lua_scripts_write_only_known_fields_and_states():
    """Every quoted word in a script is a Redis command, a record field, a state, or a decide.lua mode."""
    fields = set().union(*(r.spec() for r in RECORDS))
    states = {s.value for s in MemberState} | {s.value for s in ExperimentState}
    other = {"HGET", "HSET", "HMGET", "HDEL", "ZADD", "ZREM", "ZCARD", "ZCOUNT", "ZRANK", "ZREVRANK", "ZREVRANGE", "ZRANGE",
             "WITHSCORES", "EXISTS", "LREM", "RPUSH", "ok", "dup", "ahead", "wait", "gone", "truncation", "tournament",
             "none", "rank", "random", "strict", "stale job (member is ", "experiment is ", " with job ", ")",
             "-inf", "+inf", "(", "1", "", "XRANGE", "XTRIM", "MINID", "COUNT", "-", "+", "XADD", "*", "msg", "published", "superseded", "ended",
             "HGETALL", "LPOP",
             "TYPE", "RENAME",  # move_aside.lua: a key of another type moved aside
             "LRANGE", "TIME", "HSETNX", "hash", "pbt_home", "pbt_passed_ms",  # take_job.lua's affinity
             "string", "table", "WRONGTYPE",  # Lua's type names; Redis's error for a key of another type
             "%S+", "%.17g", " ",  # decide.lua's exploit.window: split on spaces, format as Python's rules.window
             "bad", "seq"}  # decide.lua's reply to a seq that is no number
    unknown = set()
    for path in LUA.glob("*.lua"):
        code = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
        unknown |= {w for w in re.findall(r"'([^']*)'", code) if w not in fields | states | other}
    assert unknown == set()
