"""msgpack for RQ, and SegmentJob: a queued job is data, and only run_segment ever runs."""

from __future__ import annotations

import pickle
import zlib

import msgpack
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue, SimpleWorker
from rq.callbacks import Callback
from rq.job import Job
from rq.webhook import Webhook

from pbt_mq.broker.jobs import SEGMENT_FUNC, MsgpackSerializer, SegmentJob, UnsafeJob
from pbt_mq.core.protocol import ProtocolError


def listify(obj):
    """What msgpack gives back: every tuple becomes a list."""
    if isinstance(obj, (tuple, list)):
        return [listify(x) for x in obj]
    if isinstance(obj, dict):
        return {k: listify(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- MsgpackSerializer


def test_rq_job_tuple_round_trip():
    job_tuple = (SEGMENT_FUNC, None, (b"\x93\x01", "exp"), {"cmd": b"\x00\xff", "attempt": (1, 2)})
    data = MsgpackSerializer.dumps(job_tuple)
    assert isinstance(data, bytes)
    back = MsgpackSerializer.loads(data)
    assert back == [SEGMENT_FUNC, None, [b"\x93\x01", "exp"], {"cmd": b"\x00\xff", "attempt": [1, 2]}]
    func_name, instance, args, kwargs = back  # RQ unpacks it exactly like this
    assert (func_name, instance) == (SEGMENT_FUNC, None)


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, derandomize=True)
@given(obj=plain)
def test_round_trip_property(obj):
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps(obj)) == listify(obj)


def test_sets_are_sorted_lists():
    assert MsgpackSerializer.loads(MsgpackSerializer.dumps({"s": {3, 1, 2}, "f": frozenset("ba")})) == {
        "s": [1, 2, 3], "f": ["a", "b"]}


@pytest.mark.parametrize("obj", [object(), Job, lambda: 1, 1j, [ValueError("x")]])
def test_dumps_refuses_objects(obj):
    with pytest.raises(TypeError, match="plain data only"):
        MsgpackSerializer.dumps(obj)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_loads_refuses_pickle(protocol: int):
    data = pickle.dumps((SEGMENT_FUNC, None, (), {}), protocol=protocol)
    with pytest.raises(ProtocolError, match="^payload"):
        MsgpackSerializer.loads(data)


@pytest.mark.parametrize(
    "data",
    [b"\xc1", msgpack.packb([1, 2])[:-1], msgpack.packb(msgpack.ExtType(3, b"x")), msgpack.packb(msgpack.Timestamp(0))],
)
def test_loads_refuses_garbage_and_ext(data: bytes):
    with pytest.raises(ProtocolError, match="^payload"):
        MsgpackSerializer.loads(data)


def test_loads_size_limit_is_larger_than_a_message_but_bounded():
    big = MsgpackSerializer.dumps(["x" * (2 << 20)])
    assert MsgpackSerializer.loads(big) == ["x" * (2 << 20)]
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        MsgpackSerializer.loads(MsgpackSerializer.dumps(["x" * (5 << 20)]))


# ---------------------------------------------------------------- SegmentJob


def run_segment(payload: bytes) -> dict:
    """The runner a worker installs; these tests check that only it can be reached."""
    return {"ran": payload}


@pytest.fixture(autouse=True)
def runner():
    SegmentJob.install_runner(run_segment)
    yield
    SegmentJob.runner = None


def make(r: redis.Redis, func, **kw) -> SegmentJob:
    return SegmentJob.create(func, connection=r, serializer=MsgpackSerializer, **kw)


def fetched(r: redis.Redis, job: Job) -> SegmentJob:
    """Save ``job`` to Redis and read it back as a worker would."""
    job.save()
    return SegmentJob.fetch(job.id, connection=r, serializer=MsgpackSerializer)


def test_segment_func_allowed(r: redis.Redis):
    job = fetched(r, make(r, SEGMENT_FUNC, args=[b"\x01"], kwargs={"k": 1}))
    assert job.func is run_segment
    assert job.args == [b"\x01"] and job.kwargs == {"k": 1}
    assert job.success_callback is None and job.failure_callback is None and job.stopped_callback is None


@pytest.mark.parametrize(
    "func",
    ["os.system", "builtins.eval", "subprocess.run", "pbt_mq.segment.run_segment_x", "pbt_mq.segment.run",
     "pbt_mq.segment.run_segment.__globals__", "", "run_segment"],
)
def test_other_funcs_refused(r: redis.Redis, func: str):
    job = make(r, func, args=["echo pwned"])
    with pytest.raises(UnsafeJob, match=f"refusing to run {func!r}"):
        _ = job.func
    with pytest.raises(UnsafeJob):
        _ = fetched(r, job).func


def test_forged_job_data_refused(r: redis.Redis):
    """Someone writes the job hash directly: msgpack data naming another function."""
    job = make(r, SEGMENT_FUNC)
    job.save()
    r.hset(job.key, "data", msgpack.packb(["os.system", None, ["echo pwned"], {}]))
    with pytest.raises(UnsafeJob, match="'os.system'"):
        _ = SegmentJob.fetch(job.id, connection=r, serializer=MsgpackSerializer).func


def test_forged_pickle_data_never_unpickled(r: redis.Redis):
    job = make(r, SEGMENT_FUNC)
    job.save()
    r.hset(job.key, "data", pickle.dumps(("os.system", None, ("echo pwned",), {})))
    forged = SegmentJob.fetch(job.id, connection=r, serializer=MsgpackSerializer)
    with pytest.raises(Exception) as info:
        _ = forged.func
    assert isinstance(info.value.__cause__ or info.value, ProtocolError)


def test_bound_instance_refused(r: redis.Redis):
    job = make(r, SEGMENT_FUNC)
    job.save()
    r.hset(job.key, "data", msgpack.packb([SEGMENT_FUNC, "some-instance", [], {}]))
    with pytest.raises(UnsafeJob, match="refusing to run"):
        _ = SegmentJob.fetch(job.id, connection=r, serializer=MsgpackSerializer).func


@pytest.mark.parametrize("which", ["on_success", "on_failure", "on_stopped"])
def test_callbacks_refused(r: redis.Redis, which: str):
    job = fetched(r, make(r, SEGMENT_FUNC, **{which: Callback("os.system")}))
    with pytest.raises(UnsafeJob, match="callbacks are not allowed"):
        _ = job.func
    prop = {"on_success": "success_callback", "on_failure": "failure_callback", "on_stopped": "stopped_callback"}
    with pytest.raises(UnsafeJob, match="'os.system'"):
        _ = getattr(job, prop[which])  # RQ calls these on its own, e.g. the failure callback after func refused


def test_webhooks_refused_and_never_sent(r: redis.Redis, monkeypatch: pytest.MonkeyPatch):
    hook = Webhook("http://169.254.169.254/latest/meta-data", "failed")
    job = fetched(r, make(r, SEGMENT_FUNC, webhooks=[hook]))
    assert job.webhooks
    with pytest.raises(UnsafeJob, match="webhooks"):
        _ = job.func
    sent: list[str] = []
    monkeypatch.setattr(Webhook, "send", lambda self, *a, **k: sent.append(self.url))
    job.send_webhooks("failed", exc_string="x")
    assert sent == []
    Job.send_webhooks(job, "failed", exc_string="x")  # a plain Job would send it: the check above can fail
    assert sent == [hook.url]


def test_queue_with_segment_job_class_round_trips(r: redis.Redis):
    q = Queue("pbt-test", connection=r, serializer=MsgpackSerializer, job_class=SegmentJob)
    job = q.enqueue(SEGMENT_FUNC, b"\x01\x02", attempt=0)
    raw = zlib.decompress(r.hget(job.key, "data"))  # RQ compresses the serialized tuple
    assert MsgpackSerializer.loads(raw) == [SEGMENT_FUNC, None, [b"\x01\x02"], {"attempt": 0}]
    assert raw[0] == 0x94  # a msgpack array of 4, not a pickle (0x80)
    back = q.fetch_job(job.id)
    assert isinstance(back, SegmentJob) and back.func is run_segment


CALLS: list[tuple] = []


def record(*args, **kwargs):
    CALLS.append(args)


@pytest.mark.parametrize("func", [record, SEGMENT_FUNC])
def test_worker_runs_no_forged_func_and_no_callback(r: redis.Redis, func):
    """End to end with a real RQ worker: a refused job fails, and its failure callback never runs."""
    CALLS.clear()
    q = Queue("pbt-test", connection=r, serializer=MsgpackSerializer, job_class=SegmentJob)
    job = q.enqueue(func, "args", on_success=Callback(record), on_failure=Callback(record))
    worker = SimpleWorker([q], connection=r, serializer=MsgpackSerializer, job_class=SegmentJob)
    worker.subscribe = lambda: None  # see NO_PUBSUB in test_rq_contract: a 60 s stop, on a channel we never use
    worker.work(burst=True)
    assert CALLS == []
    back = q.fetch_job(job.id)
    assert back.get_status() == "failed"
    assert "UnsafeJob" in back.latest_result().exc_string


def test_job_data_is_inflated_only_up_to_the_limit():
    import zlib

    from pbt_mq.broker.jobs import bounded_inflate

    assert bounded_inflate(zlib.compress(b"a" * 10), 10) == b"a" * 10
    assert bounded_inflate(zlib.compress(b"a" * 11), 10) is None
    assert bounded_inflate(b"\x93\x01\x02\x03", 10) == b"\x93\x01\x02\x03"  # not zlib: as RQ, the raw bytes


# ---------------------------------------------------------------- the worker's job loop (take_job)


def test_take_job_reads_the_own_queue_first_and_checks_what_it_takes(r: redis.Redis):
    from pbt_mq.broker.jobs import RESULT_TTL_S, UnreadableJob, enqueue, expire_job, queue_for, take_job

    for name, jid in (("tj", "tj_m000_1"), ("tj@w1", "tj_m001_1")):
        pipe = r.pipeline(transaction=True)
        pipe.multi()
        enqueue(pipe, queue_for(r, name), jid, b"\x93\x01\x02\x03", 60, "segment")
        pipe.execute()
    job, payload, waited = take_job(r, ["tj@w1", "tj"], 0.1)  # one round trip: LPOP and the job's hash
    assert (job.id, payload, waited) == ("tj_m001_1", b"\x93\x01\x02\x03", False)
    r.execute_command(*expire_job(job, True))
    assert 0 < r.ttl(job.key) <= RESULT_TTL_S
    assert take_job(r, ["tj@w1", "tj"], 0.1)[0].id == "tj_m000_1"
    assert take_job(r, ["tj@w1", "tj"], 0.1) is None  # both empty: BLPOP waited, then nothing
    Queue("tj", connection=r, serializer=MsgpackSerializer).enqueue("os.system", "true")
    with pytest.raises(UnreadableJob, match="refusing to run 'os.system'") as e:
        take_job(r, ["tj"], 0.1)
    assert isinstance(e.value.why, UnsafeJob)
    r.hset("rq:job:pickled", mapping={"data": pickle.dumps({"x": 1}), "status": "queued", "origin": "tj"})
    r.rpush("rq:queue:tj", "pickled")
    with pytest.raises(UnreadableJob, match="pickle"):
        take_job(r, ["tj"], 0.1)
    r.rpush("rq:queue:tj", "gone-job-id")
    with pytest.raises(UnreadableJob, match="its hash is gone"):
        take_job(r, ["tj"], 0.1)


def _queue_homed(r: redis.Redis, name: str, jobs: list[tuple[str, str]]) -> None:
    """Queue segment jobs (id, home) in this order, as the arbiter does."""
    from pbt_mq.broker.jobs import enqueue, queue_for

    pipe = r.pipeline(transaction=True)
    pipe.multi()
    for jid, home in jobs:
        enqueue(pipe, queue_for(r, name), jid, b"\x93\x01\x02\x03", 60, "segment", home=home)
    pipe.execute()


def test_a_worker_takes_the_segments_it_holds_first_and_passes_others_over_only_for_a_while(r: redis.Redis):
    """take_job.lua's affinity: w1 passes over jobs homed at w2 (stamped), never a job homed nowhere."""
    from pbt_mq.broker.jobs import HOME_FIELD, take_job

    _queue_homed(r, "aff", [("a_m000_1", "w2"), ("a_m001_1", "w2"), ("a_m002_1", "w1"), ("a_m003_1", ""),
                            ("a_m004_1", "w1")])
    order = [take_job(r, ["aff"], 0.1, "w1", 60_000)[0].id for _ in range(3)]
    assert order == ["a_m002_1", "a_m003_1", "a_m004_1"]  # its own, then the one homed nowhere, in queue order
    assert r.hget("rq:job:a_m002_1", HOME_FIELD) == b"w1"
    stamped = [r.hget(f"rq:job:a_m00{i}_1", "pbt_passed_ms") for i in (0, 1)]
    assert all(stamped)  # passed over, with Redis's clock
    # w2 takes its own; with nothing of its own left, w1 takes the head even if homed elsewhere
    assert take_job(r, ["aff"], 0.1, "w2", 60_000)[0].id == "a_m000_1"
    assert take_job(r, ["aff"], 0.1, "w1", 60_000)[0].id == "a_m001_1"
    assert take_job(r, ["aff"], 0.1, "w1", 60_000) is None


def test_a_job_passed_over_too_long_is_taken_first_by_anyone(r: redis.Redis):
    from pbt_mq.broker.jobs import take_job

    _queue_homed(r, "aff2", [("b_m000_1", "w2"), ("b_m001_1", "w1"), ("b_m002_1", "w1")])
    assert take_job(r, ["aff2"], 0.1, "w1", 10_000)[0].id == "b_m001_1"  # b_m000_1 passed over now
    assert take_job(r, ["aff2"], 0.1, "w1", 10_000)[0].id == "b_m002_1"  # within the wait: passed again
    _queue_homed(r, "aff2", [("b_m003_1", "w1")])
    r.hset("rq:job:b_m000_1", "pbt_passed_ms", 0)  # first passed over long ago (w2 is dead, say)
    assert take_job(r, ["aff2"], 0.1, "w1", 10_000)[0].id == "b_m000_1"
    # no worker id, or a wait of 0: plain first-in, first-out, as workers of the previous release take
    _queue_homed(r, "aff3", [("c_m000_1", "w2"), ("c_m001_1", "w1")])
    assert take_job(r, ["aff3"], 0.1)[0].id == "c_m000_1"
    _queue_homed(r, "aff4", [("d_m000_1", "w2"), ("d_m001_1", "w1")])
    assert take_job(r, ["aff4"], 0.1, "w1", 0)[0].id == "d_m000_1"
