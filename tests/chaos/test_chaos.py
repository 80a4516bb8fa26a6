"""Faults injected into real processes running the toy experiment, and the invariants after.

Every run: population 4 on 2 workers and 2 arbiters, redis-server with AOF on, S3 (moto)
behind a cuttable proxy. After the fault the run must finish with: every member done (or
failed with a reason), each (member, seq) decided exactly once, every checkpoint of the
best member's lineage present and verified, and no traceback in any daemon's log.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from helpers import pbt
from report import RESULTS

from pbt_mq.core.keys import GROUP, Keys
from pbt_mq.core.protocol import ReadyEvent, SegmentCommand
from pbt_mq.state.lineage import ancestry, records
from pbt_mq.store.open import open_store

SEEDS = (1, 2)
POP = 4


def start_fleet(fleet, *worker_args: str) -> None:
    for a in ("a1", "a2"):
        fleet.start("arbiter", a, "--claim-idle-ms", "1000", "--reap-interval-ms", "500")
    for w in ("w1", "w2"):
        fleet.start("worker", w, "--heartbeat-s", "0.5", *worker_args)


def launch_toy(url: str, store: str, seed: int) -> str:
    res = pbt("launch", "workers/toy.toml", "--redis", url, "--store", store, "--set", f"seed={seed}",
              "--set", f"population.size={POP}", "--set", "stop.steps=80", "--set", "trainable_args.delay_s=0.05",
              "--set", "gc.interval_s=1")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def wait_until(pred, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = pred()
        except Exception:  # noqa: BLE001 - Redis may be restarting
            value = None
        if value:
            return value
        time.sleep(0.05)
    return None


def lineage_len(r, exp: str) -> int:
    return r.xlen(Keys(exp).lineage)


# How soon the fleet must be deciding again after each fault (issue 25: measured, and now asserted). With
# 0.5-s heartbeats, a 0.5-s reap interval and a 1-s claim idle time every fault is noticed within about
# 2 s (measured 0.05-1.4 s on 2 cores); the bounds leave room for a loaded CI machine, not for a stall.
RECOVERY_BOUND_S = {"worker SIGKILL mid-segment": 10.0, "arbiter SIGKILL": 10.0, "redis-server restart (AOF)": 10.0,
                    "S3 unreachable 15 s": 10.0, "checkpoints corrupted in the store": 30.0}


def check_invariants(r, exp: str, store_url: str, fleet, fault: str, injected: int, recovery_s,
                     corrupted: frozenset[str] = frozenset()) -> dict:
    res = pbt("wait", exp, "--timeout", "180", "--redis", fleet.redis_url, timeout=200)
    k = Keys(exp)
    states = {m: r.hgetall(k.member(m)) for m in (f"m{i:03d}" for i in range(POP))}
    lost = [m for m, h in states.items() if h.get(b"state") not in (b"done", b"failed")]
    unexplained = [m for m, h in states.items() if h.get(b"state") == b"failed" and not h.get(b"error")]
    decided = Counter((rec.member, rec.seq) for rec in records(r, exp))
    ran = Counter((f[b"member"], f[b"seq"]) for _, f in r.xrange(k.events))
    result = {
        "fault": fault, "injected": injected, "completed": int(res.returncode == 0 and not lost),
        "lost": len(lost), "duplicates": sum(n - 1 for n in decided.values()),
        "reruns": sum(n - 1 for n in ran.values()), "recovery_s": recovery_s,
    }
    RESULTS.append(result)
    assert recovery_s is not None, f"{fault}: the fleet never recovered\n{fleet.all_logs()}"
    assert recovery_s <= RECOVERY_BOUND_S[fault], f"{fault}: recovered in {recovery_s:.1f} s, bound {RECOVERY_BOUND_S[fault]} s"
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"
    assert not lost and not unexplained, states
    assert result["duplicates"] == 0
    assert r.xpending(k.events, GROUP)["pending"] == 0
    best = r.zrevrange(k.scores, 0, 0)[0].decode()
    chain = ancestry(records(r, exp), r.hget(k.member(best), "ckpt_key").decode())
    refs = {ev.checkpoint.key: ev.checkpoint for ev in (ReadyEvent.decode(f[b"msg"]) for _, f in r.xrange(k.events))}
    store = open_store(store_url)
    for rec in chain:
        if rec.ckpt_key in corrupted:  # what we broke on purpose (a segment used it while still good)
            continue
        with store.fetch_verified(refs[rec.ckpt_key]):
            pass
    for name, proc in fleet.procs.items():
        if proc.poll() is None or proc.returncode == 0:
            assert "Traceback" not in fleet.log(name), fleet.log(name)
    return result


def store_for(s3_proxy, seed: int, fault: str) -> str:
    return (f"s3://chaos-{fault.replace('_', '-')}-{seed}/ckpt?endpoint=127.0.0.1:{s3_proxy.port}"
            f"&secure=false&region=us-east-1")


def begin(fleet, chaos_redis, s3_proxy, seed: int, fault: str, *worker_args: str, wait: bool = True):
    """Start 2 arbiters and 2 workers, launch the toy, and (by default) let 8 decisions happen."""
    import redis

    r = redis.Redis.from_url(chaos_redis.url)
    store = store_for(s3_proxy, seed, fault)
    start_fleet(fleet, *worker_args)
    exp = launch_toy(chaos_redis.url, store, seed)
    if wait:
        assert wait_until(lambda: lineage_len(r, exp) >= 8), fleet.all_logs()
    return r, exp, store


@pytest.mark.parametrize("seed", SEEDS)
def test_worker_sigkill_mid_segment(chaos_fleet, chaos_redis, s3_proxy, seed):
    r, exp, store = begin(chaos_fleet, chaos_redis, s3_proxy, seed, "worker_sigkill", wait=False)
    k = Keys(exp)

    def busy_on_w1():
        for m in (f"m{i:03d}" for i in range(POP)):
            h = r.hgetall(k.member(m))
            if h.get(b"state") == b"running" and h.get(b"worker") == b"w1" and lineage_len(r, exp) >= 8:
                return m
        return None

    member = wait_until(busy_on_w1)
    assert member, chaos_fleet.all_logs()
    chaos_fleet.kill("w1", signal.SIGKILL)
    killed = time.time()
    chaos_fleet.start("worker", "w3", "--heartbeat-s", "0.5")
    restarted = wait_until(lambda: int(r.hget(k.member(member), "reaped") or 0) >= 1
                           and r.hget(k.member(member), "state") != b"queued"
                           and float(r.hget(k.member(member), "started_ms")) / 1000)
    check_invariants(r, exp, store, chaos_fleet, "worker SIGKILL mid-segment", 1,
                     restarted - killed if restarted else None)


@pytest.mark.parametrize("seed", SEEDS)
def test_arbiter_sigkill(chaos_fleet, chaos_redis, s3_proxy, seed):
    r, exp, store = begin(chaos_fleet, chaos_redis, s3_proxy, seed, "arbiter_sigkill")
    k = Keys(exp)
    chaos_fleet.kill("a1", signal.SIGKILL)
    killed = time.time()

    def a1_drained():
        consumers = {c["name"]: c for c in r.xinfo_consumers(k.events, GROUP)}
        a1 = consumers.get(b"a1") or consumers.get("a1")
        return a1 is None or a1["pending"] == 0

    before = lineage_len(r, exp)
    recovered = wait_until(lambda: a1_drained() and lineage_len(r, exp) > before)  # reclaimed, and deciding again
    check_invariants(r, exp, store, chaos_fleet, "arbiter SIGKILL", 1, time.time() - killed if recovered else None)


@pytest.mark.parametrize("seed", SEEDS)
def test_redis_restart(chaos_fleet, chaos_redis, s3_proxy, seed):
    r, exp, store = begin(chaos_fleet, chaos_redis, s3_proxy, seed, "redis_restart")
    chaos_redis.stop()  # SHUTDOWN: the AOF is complete
    time.sleep(2.0)
    chaos_redis.start()
    back = time.time()
    before = lineage_len(r, exp)
    progressed = wait_until(lambda: lineage_len(r, exp) > before)
    check_invariants(r, exp, store, chaos_fleet, "redis-server restart (AOF)", 1,
                     time.time() - back if progressed else None)


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_s3_unreachable_for_15_s(chaos_fleet, chaos_redis, s3_proxy, seed):
    r, exp, store = begin(chaos_fleet, chaos_redis, s3_proxy, seed, "s3_outage")
    k = Keys(exp)
    s3_proxy.cut()
    time.sleep(15)
    s3_proxy.restore()
    back = time.time()
    before = r.xlen(k.events)
    progressed = wait_until(lambda: r.xlen(k.events) > before)
    check_invariants(r, exp, store, chaos_fleet, "S3 unreachable 15 s", 1, time.time() - back if progressed else None)


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupt_checkpoint(chaos_fleet, chaos_redis, s3_proxy, s3_endpoint, seed):
    import io

    # every segment downloads its start: no live model, no checkpoint cache
    r, exp, store = begin(chaos_fleet, chaos_redis, s3_proxy, seed, "corrupt", "--live-models", "0", "--cache-mb", "0")
    k = Keys(exp)
    raw = open_store(store.replace(str(s3_proxy.port), s3_endpoint.rsplit(":", 1)[1]))
    garbage = b"\x00" * 128
    workers = [chaos_fleet.procs[w] for w in ("w1", "w2")]

    def queued_starts() -> set[str]:
        cmds = [SegmentCommand.decode(h[b"cmd"]) for h in (r.hgetall(k.member(f"m{i:03d}")) for i in range(POP))
                if h.get(b"state") == b"queued" and h.get(b"cmd")]
        return {c.start.key for c in cmds if c.start is not None}

    # with the workers stopped, replace the start checkpoint of every queued segment by garbage: each of
    # those segments must download it when the workers go on, so the corruption is found, not raced past
    for proc in workers:
        proc.send_signal(signal.SIGSTOP)
    try:
        keys = wait_until(queued_starts, 20)
        for key in keys or ():
            raw.client.minio.remove_object(raw.bucket, raw.name(key))
            raw.client.minio.put_object(raw.bucket, raw.name(key), io.BytesIO(garbage), len(garbage))
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGCONT)
    assert keys, chaos_fleet.all_logs()
    corrupted = time.time()
    recovered = wait_until(lambda: any(b"bad checkpoint" in f[b"reason"] for _, f in r.xrange(k.dead)), 60)
    assert recovered, f"no worker noticed the corrupted {sorted(keys)}\n{chaos_fleet.all_logs()}"
    check_invariants(r, exp, store, chaos_fleet, "checkpoints corrupted in the store", len(keys),
                     time.time() - corrupted, corrupted=frozenset(keys))
