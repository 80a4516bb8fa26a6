"""Issue 24: a tracker that cannot start is said where the user looks; the experiment still finishes."""

from __future__ import annotations

from helpers import launch, pbt, status


def test_a_tracker_that_cannot_start_shows_in_status(fleet, redis_url, tmp_path):
    fleet.start("worker", "w1", "--heartbeat-s", "0.5")
    fleet.start("arbiter", "a1")
    exp = launch(redis_url, f"file://{tmp_path / 'ckpt'}", "population.size=2", "stop.steps=12",
                 'tracking.mlflow="nosuchscheme-tracker://x"')
    res = pbt("wait", exp, "--timeout", "60", "--redis", redis_url, timeout=80)
    assert res.returncode == 0, res.stdout + res.stderr + fleet.all_logs()  # it trains on, untracked
    st = status(redis_url, exp)
    assert st["tracking_problem"] and st["tracking_problem"].startswith("not tracked: mlflow"), st["tracking_problem"]
    assert f"tracking: {st['tracking_problem']}" in pbt("status", exp, "--redis", redis_url).stdout
