"""What ``pip install .`` installs (issue 25): the library and its data files, and nothing else; the
examples (workers/) stay files of a checkout, so a user's own ``workers`` package never clashes."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_pbt_mq_and_its_data_and_no_examples(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    [wheel] = tmp_path.glob("pbt_mq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"pbt_mq", next(n.split("/")[0] for n in names if ".dist-info/" in n)}
    lua = {p.name for p in (ROOT / "pbt_mq" / "broker" / "lua").glob("*.lua")}
    assert {n.rsplit("/", 1)[-1] for n in names if n.startswith("pbt_mq/broker/lua/")} == lua
    assert "pbt_mq/dashboard/static/app.js" in names and "pbt_mq/tools/study/nqm.py" in names
    assert not [n for n in names if n.startswith("workers/") or n.endswith(".toml")]
