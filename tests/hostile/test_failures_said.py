"""Issue 24: a failed segment's traceback, the user's file and line, is one command away."""

from __future__ import annotations

from helpers import launch, pbt


def test_a_failed_members_traceback_is_one_command_away(fleet, redis_url, tmp_path):
    fleet.start("worker", "w1", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=2", "population.initial=[]",
                 "trainable=tests.trainables:AlwaysRaises", "worker.max_retries=0", "worker.on_failure=fail")
    res = pbt("wait", exp, "--timeout", "60", "--redis", redis_url, timeout=80)
    assert res.returncode == 1, res.stdout + res.stderr + fleet.all_logs()
    table = pbt("status", exp, "--redis", redis_url).stdout
    assert f"m000 failed: ValueError: this trainable is broken; its traceback: pbt status {exp} m000" in table, table
    one = pbt("status", exp, "m000", "--redis", redis_url)
    assert one.returncode == 0, one.stderr
    assert "Traceback (most recent call last)" in one.stdout and 'trainables.py", line' in one.stdout, one.stdout
    assert "ValueError: this trainable is broken" in one.stdout
    lineage = pbt("lineage", exp, "--member", "m000", "--redis", redis_url)
    assert lineage.returncode == 0, lineage.stderr
    assert "failed: ValueError: this trainable is broken" in lineage.stdout and "has no checkpoint" in lineage.stdout
    bad = pbt("status", exp, "m009", "--redis", redis_url)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"pbt: error: {exp} has no member 'm009'; its members: m000 .. m001"]
