"""What pbt-mq relies on in RQ (broker/jobs.py, its only user), against the installed RQ and a real Redis."""

from __future__ import annotations

import rq
import rq.worker_registration as registration
from contracts import declared, in_range
from rq import Queue
from rq.job import Job
from rq.worker import SimpleWorker

from pbt_mq.broker import jobs


def test_the_installed_rq_is_in_the_declared_range():
    assert in_range("rq", rq.__version__), (rq.__version__, str(declared("rq")))


def test_the_internals_we_name_are_there(r):
    assert Queue.redis_queue_namespace_prefix == "rq:queue:" == jobs.QUEUE_PREFIX
    assert Queue.redis_queues_keys == "rq:queues"
    assert callable(Queue._fetch_dequeued_job) and callable(SimpleWorker._set_connection)  # noqa: SLF001
    assert registration.REDIS_WORKER_KEYS == "rq:workers" and registration.WORKERS_BY_QUEUE_KEY % "q" == "rq:workers:q"
    job = Job("x", connection=r)
    assert all(hasattr(job, a) for a in ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name"))
    assert callable(Job.restore)


def test_a_job_queued_in_a_multi_is_run_by_a_worker_with_its_id(r):
    seen = []

    def runner(payload: bytes) -> dict:
        seen.append((payload, jobs.current_job_id()))
        return {"ok": True}

    jobs.SegmentJob.install_runner(runner)
    try:
        q = jobs.queue_for(r, "contract")
        with r.pipeline(transaction=True) as pipe:
            pipe.multi()
            jobs.enqueue(pipe, q, "exp_m000_0", b"\x01\x02", 60, "a test segment")
            pipe.execute()
        assert r.lrange(jobs.queue_key("contract"), 0, -1) == [b"exp_m000_0"]
        w, queues = jobs.make_worker(r, "contract", "contract@w1", "w1", [])
        # NO_PUBSUB: RQ's command channel (kill-horse, shutdown) runs a redis-py pubsub thread whose stop
        # can wait out its 60 s get_message under load (60 s of every make test); pbt-worker never uses it
        w.subscribe = lambda: None
        assert [x.name for x in queues] == ["contract@w1", "contract"]  # its own queue first
        w.work(burst=True, with_scheduler=False, max_jobs=1)
        assert seen == [(b"\x01\x02", "exp_m000_0")]
        assert r.llen(jobs.intermediate_key(q)) == 0
    finally:
        jobs.SegmentJob.runner = None


def test_a_killed_workers_registration_is_cleared_so_its_name_can_start_again(r):
    w, _ = jobs.make_worker(r, "contract", "contract@w2", "w2", [])
    w.register_birth()  # as a worker killed with SIGKILL leaves it
    assert r.exists("rq:worker:w2")
    assert jobs.forget_registration(r, "w2", "contract") is True
    assert not r.exists("rq:worker:w2") and not r.sismember("rq:workers", "rq:worker:w2")
    again, _ = jobs.make_worker(r, "contract", "contract@w2", "w2", [])
    again.register_birth()  # RQ would refuse a name still registered
    assert jobs.forget_registration(r, "absent", "contract") is False
