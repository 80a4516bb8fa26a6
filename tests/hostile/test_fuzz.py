"""Issue 24's fuzz test: random and adversarial values written into every key and field of a live
experiment (and the fleet's shared keys) while two others run beside it. No daemon may exit, the other
experiments finish, and every read command answers with exit 0 or one line, never a traceback."""

from __future__ import annotations

import random
import time

import pytest
from helpers import PAPER_INIT_4, launch, pbt

from pbt_mq.core.keys import EXPERIMENTS, WORKERS, Keys, worker_key

SLOW = ("population.size=4", PAPER_INIT_4, "trainable_args.delay_s=0.02", "stop.steps=60")
VALUES = ["", "abc", "-1", "0", "1e999", "nan", "-inf", "[1, 2]", "{}", '{"a":', "null", "true", "9" * 40,
          "\x00\xff\xfe", "\x1b[2J", "done", "failed", "running", "m000", "0-0", '{"key": 1}', "1.5", " 7 "]


def garbage(rng: random.Random) -> bytes | str:
    if rng.random() < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    return rng.choice(VALUES)


def fuzz(r, exp: str, rng: random.Random) -> list[str]:
    """One pass: every key of the experiment gets garbage of its own type; then two of its keys become strings."""
    done = []
    for key in sorted(r.scan_iter(match=f"{Keys(exp).prefix}*", count=1000)):
        kind = r.type(key).decode()
        name = key.decode()
        if kind == "hash":
            fields = list(r.hkeys(key)) or [b"state"]
            for f in rng.sample(fields, min(len(fields), 4)):
                r.hset(key, f, garbage(rng))
            r.hset(key, "unexpected", garbage(rng))
        elif kind == "zset":
            r.zadd(key, {garbage(rng): rng.choice([0, -1, 1e300, float("inf")])})
        elif kind == "stream":
            r.xadd(key, {rng.choice(["member", "seq", "msg", "score", "action", "step", "failed"]): garbage(rng)
                         for _ in range(3)})
        elif kind == "list":
            r.rpush(key, garbage(rng))
        done.append(f"{kind} {name}")
    for key in rng.sample(sorted(r.scan_iter(match=f"{Keys(exp).prefix}*", count=1000)), 2):
        r.delete(key)  # a key of another type (SET over a hash, a stream...): Redis answers WRONGTYPE
        r.set(key, garbage(rng))
        done.append(f"string {key.decode()}")
    r.zadd(WORKERS, {"fuzz-worker": time.time() * 1000})
    r.hset(worker_key("fuzz-worker"), mapping={"beat_ms": garbage(rng), "segments": garbage(rng),
                                                "current": garbage(rng), "queue": garbage(rng)})
    r.zadd(EXPERIMENTS, {"not an id!": 1, garbage(rng): 2})
    return done


def one_line_or_ok(res) -> bool:
    """Exit 0, or one error line; a reader may also say in a line of its own what it skipped."""
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    others = [line for line in lines if ": error: " not in line]
    return ("Traceback" not in res.stderr and all(line.startswith("pbt: ") for line in others)
            and (res.returncode == 0 or len(errors) == 1))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzing_one_experiment_stops_nothing_else(seed, fleet, redis_url, r, tmp_path):
    for name in ("w1", "w2"):
        fleet.start("worker", name, "--heartbeat-s", "0.5")
    for name in ("a1", "a2"):
        fleet.start("arbiter", name, "--claim-idle-ms", "1000", "--reap-interval-ms", "300", "--reap-grace-ms", "1000")
    store = f"file://{tmp_path / 'ckpt'}"
    victim = launch(redis_url, store, *SLOW)
    others = [launch(redis_url, store, *SLOW) for _ in range(2)]
    deadline = time.monotonic() + 30
    while not r.exists(Keys(victim).lineage) and time.monotonic() < deadline:
        time.sleep(0.05)
    rng = random.Random(seed)
    touched = fuzz(r, victim, rng)
    assert len(touched) >= 8, touched  # the live experiment had its keys of every kind
    for exp in others:
        res = pbt("wait", exp, "--timeout", "240", "--redis", redis_url, timeout=260)
        assert res.returncode == 0, f"{exp}: {res.stdout}\n{res.stderr}\n{fleet.all_logs()[-5000:]}"
    time.sleep(2.0)  # a few more reaper passes over the victim
    dead = {name: p.returncode for name, p in fleet.procs.items() if p.poll() is not None}
    assert not dead, f"{dead}\n{fleet.all_logs()[-5000:]}"
    out = tmp_path / "out"
    for exp in (victim, *others):
        for args in (("status", exp), ("status", exp, "--json"), ("lineage", exp), ("stats", exp),
                     ("top", exp, "--once"), ("export", exp, "--best", "-o", str(out / exp)), ("list",)):
            res = pbt(*args, "--redis", redis_url)
            assert one_line_or_ok(res), (args, res.returncode, res.stderr[-3000:])
            if exp != victim:
                assert res.returncode == 0, (args, res.stderr[-2000:])
    assert "Traceback" not in fleet.all_logs(), fleet.all_logs()[-6000:]
