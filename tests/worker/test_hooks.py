"""Observers are hooks: every checkpoint moved is reported, the overlapped upload's too, and a
hook that raises never breaks a segment."""

from __future__ import annotations

import hashlib

from pbt_mq.core.hooks import Hook, Hooks
from pbt_mq.core.keys import Keys
from pbt_mq.store.open import open_store
from pbt_mq.worker.uploads import Uploads


class Recorder(Hook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def checkpoint_saved(self, experiment: str, nbytes: int, seconds: float) -> None:
        self.calls.append(("saved", experiment, nbytes, seconds))


class Broken(Hook):
    def checkpoint_saved(self, experiment: str, nbytes: int, seconds: float) -> None:
        raise RuntimeError("an observer's bug")


def test_an_overlapped_upload_reports_its_bytes_and_its_serializing_time_too(r, tmp_path):
    rec = Recorder()
    store = open_store(f"file://{tmp_path}")
    data = memoryview(b"x" * 4096)
    key = "exp/m000/000001-s4-abcd.pt"
    r.zadd(Keys("exp").uploading, {key: 1})
    up = Uploads(r, Hooks([Broken(), rec]))  # the broken hook first: the recorder still hears
    up.start(store, "exp", key, data, hashlib.sha256(data).hexdigest(), serialize_s=0.25)
    up.wait()
    assert store.exists(key)
    assert rec.calls and rec.calls[0][:3] == ("saved", "exp", 4096) and rec.calls[0][3] >= 0.25
    assert r.zscore(Keys("exp").uploading, key) is None and r.zscore(Keys("exp").stored, key) is not None


def test_no_hook_installed_is_falsy_so_callers_skip_the_calls():
    assert not Hooks() and Hooks([Hook()])
