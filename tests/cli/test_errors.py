"""Bad input on the command line: one line saying what is wrong, exit 2, never a traceback."""

from __future__ import annotations

import pytest
from helpers import ROOT, TOY, pbt


@pytest.mark.parametrize(
    "args, message",
    [
        (["launch", TOY, "--set", "exploit.quantile=0.9"], "exploit.quantile: must be <= 0.5"),
        (["launch", TOY, "--set", "hparams.h0.low=2.0"], "hparams.h0.low: must be < high"),
        (["launch", str(ROOT / "nope.toml")], "cannot read the experiment file"),
        (["launch", TOY, "--set", "noequals"], "expected section.key=value"),
        (["launch", TOY, "--store", "ftp://x"], "scheme must be file:// or s3://"),
        (["wait", "x", "--timeout", "soon"], "invalid float value"),
        (["frobnicate"], "invalid choice"),
        (["compare", "a", "b", "-o", "x.txt"], "-o x.txt: expected a file ending in .png, .svg, .pdf"),
        (["plot", "a", "-o", "report.jpg"], "-o report.jpg: expected a file ending in .png, .svg, .pdf"),
        (["compare", "a"], "give 2 to 8 different experiments, got 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, redis_url):
    res = pbt(*args, "--redis", redis_url) if args[0] in ("launch", "wait", "compare", "plot") else pbt(*args)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in res.stderr, res.stderr
