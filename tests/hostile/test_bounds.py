"""Issue 24: numbers a user types are checked like every setting: one line, exit 2, nothing started."""

from __future__ import annotations

import pytest
from helpers import TOY, pbt


@pytest.mark.parametrize("workers", ["0", "-1", "100000", "two"])
def test_pbt_local_refuses_a_worker_count_out_of_bounds(workers, tmp_path):
    res = pbt("local", TOY, f"--workers={workers}", "--dir", str(tmp_path / "wd"), timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"pbt local: error: argument --workers: expected an integer in [1, 256], got '{workers}'"]
    assert not (tmp_path / "wd").exists()  # nothing created, nothing started


def test_a_flag_is_checked_as_its_variable_is():
    res = pbt("local", TOY, "--workers", "3", "--dir", "/nonexistent/x", "--help")
    assert res.returncode == 0
    res = pbt("arbiter", "--claim-idle-ms", "0")
    assert res.returncode == 2 and "--claim-idle-ms: expected an integer >= 1 (ms), got '0'" in res.stderr, res.stderr
