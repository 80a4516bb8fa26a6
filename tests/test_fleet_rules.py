"""The rules users ask for (issue 17), end to end: real pbt-worker and pbt-arbiter processes, a real
redis-server, the toy. Burn-in, failed members replaced, plug-in rules, synchronous rounds."""

from __future__ import annotations

from helpers import PAPER_INIT_4, launch, lineage_counts, pbt, status

from pbt_mq.core.model import Action
from pbt_mq.state.experiment import load_config
from pbt_mq.state.lineage import records, replay_decisions


def wait_done(fleet, redis_url: str, exp: str, code: int = 0, timeout: int = 240) -> None:
    res = pbt("wait", exp, "--timeout", str(timeout), "--redis", redis_url, timeout=timeout + 20)
    assert res.returncode == code, f"{res.stdout}\n{res.stderr}\n{fleet.all_logs()}"


def start(fleet, workers: int = 2, *arbiter_args: str) -> None:
    for i in range(workers):
        fleet.start("worker", f"w{i + 1}", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1", "--claim-idle-ms", "2000", "--reap-interval-ms", "500", *arbiter_args)


def test_burn_in_no_exploit_before_step_n(fleet, redis_url, r, tmp_path):
    start(fleet)
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=4", PAPER_INIT_4,
                 "exploit.burn_in_steps=40", "exploit.compare=latest", "trainable_args.delay_s=0.01")
    wait_done(fleet, redis_url, exp)
    recs = records(r, exp)
    exploits = [rec for rec in recs if rec.action is Action.EXPLOIT]
    assert exploits, "the toy exploits once the burn-in is over"
    assert min(rec.step for rec in exploits) >= 40 and min(rec.parent_step for rec in exploits) >= 40, \
        [(rec.member, rec.step, rec.parent_step) for rec in exploits]
    assert {rec.action for rec in recs if rec.step < 40} == {Action.CONTINUE}
    assert max(lineage_counts(r, exp).values()) == 1
    assert replay_decisions(load_config(r, exp), recs) == []
    assert status(redis_url, exp)["state"] == "done"
