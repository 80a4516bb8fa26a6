"""Every PBT_* variable: one validated table, feeding --help and the README; a bad value is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pbt_mq.cli import daemons
from pbt_mq.cli import pbt as pbt_cli
from pbt_mq.core import settings

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PBT_")}
    return subprocess.run([sys.executable, "-m", "pbt_mq", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**base, "PYTHONPATH": str(ROOT), **env}, timeout=timeout)


@pytest.mark.parametrize(("env", "value", "expects"), [
    ("PBT_HEARTBEAT_S", "abc", "a number of seconds in [0.05, 3600]"),
    ("PBT_CLAIM_IDLE_MS", "-5", "an integer >= 1 (ms)"),
    ("PBT_LIVE_MODELS", "2", "0 or 1"),
    ("PBT_S3_SECURE", "maybe", "true or false"),
    ("PBT_REDIS_URL", "localhost:6379", "redis://"),
    ("PBT_LOG_LEVEL", "LOUD", "DEBUG | INFO"),
    ("PBT_METRICS_PORT", "http", "a port number"),
])
@pytest.mark.parametrize("command", [("list",), ("worker", "--burst"), ("arbiter", "--burst")])
def test_a_bad_value_is_one_line_naming_the_variable_and_exit_2(env, value, expects, command):
    res = run(*command, env={env: value})
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert env in res.stderr and expects in res.stderr, res.stderr


def test_a_secret_is_never_echoed():
    res = run("list", env={"PBT_S3_SECRET_KEY": "   "})
    assert res.returncode == 2 and "PBT_S3_SECRET_KEY=***" in res.stderr


def test_every_value_in_the_table_parses_and_its_default_is_valid():
    for s in settings.TABLE:
        assert s.env.startswith("PBT_") and s.expects and s.doc
        if s.default is not None and s.env != "PBT_LOG_LEVEL":
            assert s.parse(str(s.default).lower() if isinstance(s.default, bool) else str(s.default)) == s.default


def test_options_take_their_defaults_from_the_settings_after_parsing(monkeypatch):
    monkeypatch.setenv("PBT_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("PBT_QUEUE", "gpu")
    from pbt_mq.cli.options import resolve

    a = resolve(daemons.build_worker_parser().parse_args([]))
    assert a.heartbeat_s == 0.5 and a.queue == "gpu" and a.device == "cpu" and a.live_models == 1
    assert resolve(daemons.build_worker_parser().parse_args(["--queue", "cpu"])).queue == "cpu"  # the flag wins


def test_help_names_every_variable_a_command_reads():
    helps = [p.format_help() for p in (daemons.build_worker_parser(), daemons.build_arbiter_parser())]
    sub = pbt_cli.build_pbt_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse's own table
    helps += [p.format_help() for p in sub.values()]
    named = {s.env for s in settings.TABLE if any(s.env in h for h in helps)}
    store_only = {"PBT_S3_ACCESS_KEY", "PBT_S3_SECRET_KEY", "PBT_S3_ENDPOINT", "PBT_S3_SECURE",
                  "PBT_S3_CONNECT_TIMEOUT", "PBT_S3_READ_TIMEOUT", "PBT_S3_RETRIES", "PBT_STORE_RETRY_S"}
    assert named | store_only == set(settings.SETTINGS)


def test_the_readme_carries_the_table():
    assert settings.markdown_table() in (ROOT / "README.md").read_text()
