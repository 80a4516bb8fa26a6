"""The experiment's state in Redis: launch, stop, the end of an experiment."""

from __future__ import annotations

from helpers import TOY

from pbt_mq.config.parse import load_file
from pbt_mq.core.keys import Keys
from pbt_mq.state.experiment import launch, stop


def test_stop_never_overwrites_done(r, tmp_path):
    cfg = load_file(TOY, [])
    exp = launch(r, cfg, f"file://{tmp_path}")
    r.hset(Keys(exp).meta, "state", "done")
    assert stop(r, exp) is False
    assert r.hget(Keys(exp).meta, "state") == b"done"
