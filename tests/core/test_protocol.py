"""The wire protocol: round trips, and every malformed payload refused with the field named."""

from __future__ import annotations

import math
import pickle
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_mq.core.failed import FailedEvent, decode_event, is_failed
from pbt_mq.core.protocol import (
    MAX_MESSAGE_BYTES,
    SCHEMA_VERSION,
    CheckpointRef,
    ProtocolError,
    ReadyEvent,
    SegmentCommand,
    safe_unpackb,
)

SHA = "ab" * 32
REF = CheckpointRef("exp/m0/00003-1a2b.pt", SHA, 1234)
DROP = object()  # a sentinel: remove the field from the payload


def case_id(changes: dict) -> str:
    """A test id that is the same in every process (pytest-xdist compares them): DROP by name, not address."""
    return str({k: "DROP" if v is DROP else v for k, v in changes.items()})[:60]


def ready(**changes) -> ReadyEvent:
    base = dict(
        experiment="exp-1", member="m0", seq=3, step=400, score=0.91, checkpoint=REF,
        hparams={"lr": 0.01, "batch": 64, "opt": "sgd", "nesterov": True},
        metrics={"accuracy": 0.91, "loss": 0.3}, worker="gpu-7", timings_s={"train": 1.5, "upload": 0.2},
        train_s=12.5, start_step=300, start_key="exp/m0/00002-ffff.pt",
    )
    return ReadyEvent(**{**base, **changes})


def command(**changes) -> SegmentCommand:
    base = dict(
        experiment="exp-1", member="m1", seq=4, step=400, hparams={"lr": 0.008, "opt": "adam"},
        why="exploit", start=REF, until_step=500, parent="m0", parent_step=400, train_s=3.0, attempt=1,
        ready_ms=1_700_000_000_000,
    )
    return SegmentCommand(**{**base, **changes})


def tamper(data: bytes, **changes) -> bytes:
    """Decode a valid message, change fields (DROP removes one; dotted names reach into maps), re-pack."""
    m = msgpack.unpackb(data)
    for name, value in changes.items():
        node, *rest = name.split("__")
        target, key = (m, node) if not rest else (m[node], rest[0])
        if value is DROP:
            del target[key]
        else:
            target[key] = value
    return msgpack.packb(m, use_bin_type=True)


def refused(decode, data, field: str) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    msg = str(info.value)
    assert re.match(rf"{re.escape(field)}[:. ]", msg), f"{msg!r} does not name {field!r}"
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- round trips


def test_ready_event_round_trip():
    ev = ready()
    data = ev.encode()
    assert isinstance(data, bytes)
    assert ReadyEvent.decode(data) == ev
    raw = msgpack.unpackb(data)
    assert raw["v"] == SCHEMA_VERSION and raw["t"] == "ready"
    assert raw["checkpoint"] == {"key": REF.key, "sha256": SHA, "size": 1234}


def test_ready_event_defaults_round_trip():
    ev = ReadyEvent("e", "m", 0, 0, 0.5, REF, {"lr": 0.1})
    back = ReadyEvent.decode(ev.encode())
    assert back == ev and back.start_key is None and back.metrics == {} and back.worker == ""


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf])
def test_ready_event_allows_non_finite_score(score: float):
    back = ReadyEvent.decode(ready(score=score, metrics={"loss": score}).encode())
    assert math.isnan(back.score) if math.isnan(score) else back.score == score


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"start": None, "why": "start", "parent": None, "parent_step": None},
        {"until_step": None, "seconds": 30.0},
        {"why": "retry", "attempt": 1000},
    ],
)
def test_segment_command_round_trip(changes):
    cmd = command(**changes)
    assert SegmentCommand.decode(cmd.encode()) == cmd


names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
finite = st.floats(allow_nan=False, allow_infinity=False)
hparam_values = st.one_of(st.booleans(), st.integers(-(2**62), 2**62), finite, st.text(max_size=40))
hparams = st.dictionaries(st.text(min_size=1, max_size=20), hparam_values, max_size=8)
key_part = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,10}\Z").filter(lambda p: p not in (".", ".."))
keys = st.lists(key_part, min_size=1, max_size=4).map("/".join)


@settings(max_examples=200, derandomize=True)
@given(
    experiment=names, member=names, seq=st.integers(0, 2**31), step=st.integers(0, 2**62),
    score=st.floats(), hp=hparams, key=keys, sha=st.from_regex(r"\A[0-9a-f]{64}\Z"), size=st.integers(0, 2**46),
    metrics=st.dictionaries(st.text(max_size=10), st.floats(), max_size=4),
)
def test_ready_event_round_trip_property(experiment, member, seq, step, score, hp, key, sha, size, metrics):
    ev = ReadyEvent(experiment, member, seq, step, score, CheckpointRef(key, sha, size), hp, metrics=metrics)
    back = ReadyEvent.decode(ev.encode())
    same = lambda a, b: (math.isnan(a) and math.isnan(b)) or a == b  # noqa: E731
    assert same(back.score, score)
    assert back.hparams == hp and back.checkpoint == ev.checkpoint
    assert back.metrics.keys() == metrics.keys()
    assert all(same(back.metrics[k], v) for k, v in metrics.items())
    assert (back.experiment, back.member, back.seq, back.step) == (experiment, member, seq, step)


@settings(max_examples=150, derandomize=True)
@given(
    member=names, seq=st.integers(0, 2**31), hp=hparams,
    target=st.one_of(st.integers(1, 2**62).map(lambda s: {"until_step": s}),
                     st.floats(1e-6, 7 * 24 * 3600.0).map(lambda s: {"seconds": s})),
    why=st.sampled_from(["start", "continue", "exploit", "retry"]), attempt=st.integers(0, 1000),
)
def test_segment_command_round_trip_property(member, seq, hp, target, why, attempt):
    cmd = SegmentCommand("exp", member, seq, 0, hp, why, start=None, attempt=attempt, **target)
    assert SegmentCommand.decode(cmd.encode()) == cmd


# ---------------------------------------------------------------- malformed ReadyEvent fields

BAD_READY = [
    # (field changes, the field the error must start with)
    ({"experiment": DROP}, "experiment"),
    ({"experiment": "x" * 200}, "experiment"),
    ({"experiment": "has space"}, "experiment"),
    ({"member": 7}, "member"),
    ({"member": "../m0"}, "member"),
    ({"seq": "3"}, "seq"),
    ({"seq": True}, "seq"),
    ({"seq": -1}, "seq"),
    ({"seq": 1.0}, "seq"),
    ({"step": False}, "step"),
    ({"step": DROP}, "step"),
    ({"score": DROP}, "score"),
    ({"score": "0.9"}, "score"),
    ({"score": True}, "score"),
    ({"checkpoint": DROP}, "checkpoint"),
    ({"checkpoint": "exp/m0/1.pt"}, "checkpoint"),
    ({"checkpoint__key": "../../etc/passwd"}, "checkpoint.key"),
    ({"checkpoint__key": "exp/../other/x.pt"}, "checkpoint.key"),
    ({"checkpoint__key": "/etc/passwd"}, "checkpoint.key"),
    ({"checkpoint__key": "exp\\..\\x"}, "checkpoint.key"),
    ({"checkpoint__key": ""}, "checkpoint.key"),
    ({"checkpoint__key": "exp//x"}, "checkpoint.key"),
    ({"checkpoint__key": "k" * 2000}, "checkpoint.key"),
    ({"checkpoint__key": DROP}, "checkpoint.key"),
    ({"checkpoint__sha256": "AB" * 32}, "checkpoint.sha256"),
    ({"checkpoint__sha256": "ab" * 31}, "checkpoint.sha256"),
    ({"checkpoint__sha256": b"\xab" * 32}, "checkpoint.sha256"),
    ({"checkpoint__size": True}, "checkpoint.size"),
    ({"checkpoint__size": -1}, "checkpoint.size"),
    ({"checkpoint__size": "12"}, "checkpoint.size"),
    ({"hparams": DROP}, "hparams"),
    ({"hparams": [0.1]}, "hparams"),
    ({"hparams__lr": math.nan}, "hparams.lr"),
    ({"hparams__lr": math.inf}, "hparams.lr"),
    ({"hparams__lr": None}, "hparams.lr"),
    ({"hparams__lr": [0.1]}, "hparams.lr"),
    ({"hparams__lr": {"v": 1}}, "hparams.lr"),
    ({"hparams__opt": "s" * 300}, "hparams.opt"),
    ({"metrics": [1.0]}, "metrics"),
    ({"metrics__accuracy": "high"}, "metrics.accuracy"),
    ({"timings_s__train": math.nan}, "timings_s.train"),
    ({"timings_s__train": -math.inf}, "timings_s.train"),
    ({"timings_s__train": None}, "timings_s.train"),
    ({"train_s": math.nan}, "train_s"),
    ({"train_s": -1.0}, "train_s"),
    ({"worker": 5}, "worker"),
    ({"worker": "w" * 2000}, "worker"),
    ({"start_step": True}, "start_step"),
    ({"start_key": "../../secret"}, "start_key"),
    ({"start_key": "/abs/path.pt"}, "start_key"),
    ({"start_key": 3}, "start_key"),
    ({"v": SCHEMA_VERSION + 1}, "v"),
    ({"v": DROP}, "v"),
    ({"v": "1"}, "v"),
    ({"t": "segment"}, "t"),
    ({"t": DROP}, "t"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_READY, ids=[case_id(c) for c, _ in BAD_READY])
def test_ready_event_refuses_bad_field(changes, field):
    refused(ReadyEvent.decode, tamper(ready().encode(), **changes), field)


def test_wrong_version_message_explains_the_fix():
    msg = refused(ReadyEvent.decode, tamper(ready().encode(), v=2), "v")
    assert "2" in msg and "upgrade" in msg


def test_too_many_fields_refused():
    data = tamper(ready().encode(), **{f"x{i}": i for i in range(70)})
    refused(ReadyEvent.decode, data, "ready")


def test_hparams_map_too_large_refused():
    data = tamper(ready().encode(), hparams={f"h{i}": i for i in range(300)})
    refused(ReadyEvent.decode, data, "hparams")


# ---------------------------------------------------------------- malformed SegmentCommand fields

BAD_COMMAND = [
    ({"why": "because"}, "why"),
    ({"why": 3}, "why"),
    ({"why": DROP}, "why"),
    ({"until_step": DROP}, "target"),
    ({"seconds": 5.0}, "target"),
    ({"until_step": 0}, "until_step"),
    ({"until_step": True}, "until_step"),
    ({"until_step": DROP, "seconds": math.nan}, "seconds"),
    ({"until_step": DROP, "seconds": math.inf}, "seconds"),
    ({"until_step": DROP, "seconds": 0.0}, "seconds"),
    ({"until_step": DROP, "seconds": 1e9}, "seconds"),
    ({"until_step": DROP, "seconds": False}, "seconds"),
    ({"start": "exp/m0/1.pt"}, "start"),
    ({"start__key": "../../x"}, "start.key"),
    ({"start__key": "/x"}, "start.key"),
    ({"start__sha256": "nothex" * 8}, "start.sha256"),
    ({"parent": "no/slash"}, "parent"),
    ({"parent_step": -5}, "parent_step"),
    ({"attempt": 1001}, "attempt"),
    ({"attempt": True}, "attempt"),
    ({"ready_ms": 1.5}, "ready_ms"),
    ({"train_s": math.inf}, "train_s"),
    ({"hparams__lr": math.nan}, "hparams.lr"),
    ({"step": -1}, "step"),
    ({"t": "ready"}, "t"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_COMMAND, ids=[case_id(c) for c, _ in BAD_COMMAND])
def test_segment_command_refuses_bad_field(changes, field):
    refused(SegmentCommand.decode, tamper(command().encode(), **changes), field)


def test_segment_command_target_names_both_fields():
    msg = refused(SegmentCommand.decode, tamper(command().encode(), until_step=DROP), "target")
    assert "until_step" in msg and "seconds" in msg


# ---------------------------------------------------------------- the envelope


@pytest.mark.parametrize("decode", [ReadyEvent.decode, SegmentCommand.decode])
@pytest.mark.parametrize(
    ("payload", "gist"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),  # a byte msgpack never uses
        (b"{\"v\": 1, \"t\": \"ready\"}", "not valid msgpack"),  # JSON is not msgpack
        (msgpack.packb([1, "ready"]), "expected a map"),
        (msgpack.packb("ready"), "expected a map"),
        (msgpack.packb(None), "expected a map"),
        ("a str, not bytes", "expected bytes"),
        (None, "expected bytes"),
    ],
)
def test_envelope_refused(decode, payload, gist):
    msg = refused(decode, payload, "payload")
    assert gist in msg


@pytest.mark.parametrize("cut", [1, 2, 5, 20])
def test_truncated_payload_refused(cut: int):
    data = ready().encode()
    refused(ReadyEvent.decode, data[:-cut], "payload")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("obj", [{"v": 1, "t": "ready"}, ("pbt_mq.segment.run_segment", None, [], {}), 42])
def test_pickle_payload_refused(protocol: int, obj):
    data = pickle.dumps(obj, protocol=protocol)
    for decode in (ReadyEvent.decode, SegmentCommand.decode, safe_unpackb):
        msg = refused(decode, data, "payload")
        if protocol >= 2:
            assert "pickle" in msg


class Boom:
    def __reduce__(self):
        return (pytest.fail, ("a pickle payload was executed",))


def test_malicious_pickle_is_not_executed():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        refused(safe_unpackb, pickle.dumps(Boom(), protocol=protocol), "payload")


MARK = "@@ext-goes-here@@"
EXT_BYTES = [
    msgpack.packb(msgpack.ExtType(1, b"x")),
    msgpack.packb(msgpack.ExtType(127, b"")),
    b"\xd4\xfb\x00",  # fixext1 with the reserved negative type -5
    msgpack.packb(msgpack.Timestamp(1, 0)),  # type -1: msgpack decodes it without ext_hook
]


def with_raw(placement: dict, raw: bytes) -> bytes:
    """A valid ReadyEvent whose field (per ``tamper``) holds the raw msgpack bytes ``raw``."""
    data = tamper(ready().encode(), **placement)
    packed = msgpack.packb(MARK)
    assert data.count(packed) == 1
    return data.replace(packed, raw)


@pytest.mark.parametrize("raw", EXT_BYTES)
@pytest.mark.parametrize("placement", [{"score": MARK}, {"hparams__lr": MARK}, {"metrics": {"x": [1, {"y": MARK}]}}])
def test_ext_types_refused_anywhere(raw: bytes, placement: dict):
    msg = refused(ReadyEvent.decode, with_raw(placement, raw), "payload")
    assert "ext type" in msg
    refused(safe_unpackb, raw, "payload")


def test_oversized_payload_refused_before_decoding():
    data = tamper(ready().encode(), worker="w" * MAX_MESSAGE_BYTES)
    assert len(data) > MAX_MESSAGE_BYTES
    msg = refused(ReadyEvent.decode, data, "payload")
    assert "exceeds" in msg
    with pytest.raises(ProtocolError, match="payload: 11 bytes exceeds the limit of 10"):
        safe_unpackb(msgpack.packb("x" * 10), max_bytes=10)
    assert safe_unpackb(msgpack.packb("x" * 9), max_bytes=10) == "x" * 9


def test_oversized_message_refused_on_encode():
    with pytest.raises(ProtocolError, match=r"^ready: encoded size \d+ exceeds"):
        ready(hparams={f"h{i}": "x" * 256 for i in range(200)}, worker="w" * 1000,
              metrics={f"m{i:06d}": 1.0 for i in range(60_000)}).encode()


def test_map_keys_must_be_strings():
    m = msgpack.unpackb(ready().encode())
    m["hparams"] = {1: 0.1}
    refused(ReadyEvent.decode, msgpack.packb(m), "payload")
    m["hparams"] = {b"lr": 0.1}
    refused(ReadyEvent.decode, msgpack.packb(m, use_bin_type=True), "hparams key")


def test_safe_unpackb_accepts_plain_data():
    obj = {"a": [1, 2.5, "x", None, True, b"\x00\x01"], "b": {"c": {}}}
    assert safe_unpackb(msgpack.packb(obj, use_bin_type=True)) == obj
    assert safe_unpackb(bytearray(msgpack.packb([1]))) == [1]
    assert safe_unpackb(memoryview(msgpack.packb([1]))) == [1]


# ---------------------------------------------------------------- constructing commands


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"until_step": None}, "target"),
        ({"seconds": 3.0}, "target"),
        ({"why": "whim"}, "why"),
    ],
)
def test_segment_command_constructor_validates(changes, field):
    with pytest.raises(ProtocolError, match=f"^{field}:"):
        command(**changes)


@pytest.mark.parametrize("key", ["a", "exp/m0/00001.pt", "a..b/c", "...x", "x/y.z/w-1_2.pt"])
def test_checkpoint_keys_accepted(key: str):
    assert CheckpointRef.from_wire({"key": key, "sha256": SHA, "size": 0}, "ckpt").key == key


@pytest.mark.parametrize("key", ["..", "../a", "a/..", "a/../b", "/a", "a//b", "a/", ".", "a/./b", "a\\b", "a\x00b"])
def test_checkpoint_keys_refused(key: str):
    with pytest.raises(ProtocolError, match=r"^ckpt\.key: must be a relative key"):
        CheckpointRef.from_wire({"key": key, "sha256": SHA, "size": 0}, "ckpt")


def test_one_decoder_reads_an_events_entry_as_the_type_its_fields_say():
    ev = ready()
    fields = {b"member": b"m", b"seq": b"3", b"msg": ev.encode()}
    assert not is_failed(fields) and decode_event(fields) == ev
    bad = FailedEvent("exp", "m0", 3, 12, {"lr": 0.1}, "Traceback ...", start_key=REF.key)
    entry = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in bad.stream_fields().items()}
    assert is_failed(entry) and decode_event(entry) == bad
    with pytest.raises(ProtocolError):  # a ready message under the failed marker is refused, not misread
        decode_event({b"failed": b"1", b"msg": ev.encode()})
    with pytest.raises(ProtocolError):
        decode_event({b"member": b"m"})  # no message at all
