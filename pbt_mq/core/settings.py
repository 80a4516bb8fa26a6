"""Every ``PBT_*`` environment variable, in one validated table.

The table feeds the command line (each option bound to a variable takes it as its default and
names it in ``--help``), the README's settings reference (``tests/cli/test_settings.py``
checks they agree) and the store's S3 client. Every entry point calls ``check_environment()``
before doing anything else, so a bad value is one line naming the variable and what it
expects (exit 2), never a traceback from deep inside.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingError(ValueError):
    """A ``PBT_*`` variable holds a value its setting cannot take; str() is the one line to print."""


@dataclass(frozen=True)
class Setting:
    env: str
    parse: Callable[[str], Any]
    default: Any
    expects: str  # what a valid value looks like, for the error line
    doc: str
    secret: bool = False


def _number(cast: Callable[[str], Any], low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = cast(text.strip())
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(text)
        return value

    return parse


def _choice(options: tuple[str, ...], upper: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip()
        if value not in options:
            raise ValueError(text)
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError(text)
    return text.strip()


_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def modules(text: str) -> tuple[str, ...]:
    """A comma-separated list of module names (``mod1,pkg.mod2``)."""
    names = tuple(n.strip() for n in text.split(","))
    if not names or not all(_MODULE.match(n) for n in names):
        raise ValueError(text)
    return names


MIN_TOKEN_CHARS = 16  # a bearer token anyone on the network may try: long enough not to be guessed


def _secret(text: str) -> str:
    value = text.strip()
    if len(value) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(text)
    return value


def _prefixes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or not all(n.replace(".", "").replace("_", "").isalnum() for n in names):
        raise ValueError(text)
    return names


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if not any(value.startswith(f"{s}://") for s in schemes):
            raise ValueError(text)
        if value.startswith(("redis://", "rediss://")):
            parts = urlsplit(value)
            if not parts.hostname or parts.port is None and ":" in parts.netloc.rsplit("@", 1)[-1].strip("[]"):
                raise ValueError(text)  # no host, or a port that is empty
        return value  # urlsplit's .port raises ValueError for a port that is not a number in [0, 65535]

    return parse


def _pattern(regex: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(text: str) -> str:
        if not compiled.fullmatch(text.strip()):
            raise ValueError(text)
        return text.strip()

    return parse


NAME = r"[A-Za-z0-9_.-]{1,100}"  # a worker id or a queue name: what a Redis key and a log line carry plainly
_SECONDS = "a number of seconds"
TABLE: tuple[Setting, ...] = (
    Setting("PBT_REDIS_URL", _url("redis", "rediss", "unix"), "redis://localhost:6379/0",
            "redis://[user:password@]host:port/db, rediss:// for TLS", "the Redis every process shares"),
    Setting("PBT_STORE_URL", _url("file", "s3"), None, "file:///abs/path or s3://bucket/prefix?endpoint=host:port",
            "checkpoint store for `pbt launch` (else the file's store)"),
    Setting("PBT_QUEUE", _pattern(NAME), "pbt", "a queue name: 1-100 letters, digits, '.', '_' or '-'",
            "the RQ queue workers serve"),
    Setting("PBT_DEVICE", _text, "cpu", "a torch device such as cpu or cuda:0", "the worker's device"),
    Setting("PBT_WORKER_ID", _pattern(NAME), None, "1-100 letters, digits, '.', '_' or '-'",
            "the worker's id (default host-pid-device); `pbt health --worker` reads it too"),
    Setting("PBT_TORCH_THREADS", _number(int, 0), 0, "an integer >= 0", "torch intra-op threads (0: torch's default)"),
    Setting("PBT_HEARTBEAT_S", _number(float, 0.05, 3600), 2.0, f"{_SECONDS} in [0.05, 3600]",
            "worker heartbeat period; a worker is gone after three missed beats"),
    Setting("PBT_GRACE_S", _number(float, 0, 86400), 25.0, f"{_SECONDS} in [0, 86400]",
            "on SIGTERM, SIGINT or SIGUSR1 a worker finishes its segment within this long, else abandons it to the"
            " reaper"),
    Setting("PBT_LIVE_MODELS", _number(int, 0, 1), 1, "0 or 1", "keep the last trained model live for a warm next segment"),
    Setting("PBT_CACHE_MB", _number(int, 0, 1 << 24), None, "an integer >= 0 (MiB; 0: off)",
            "host memory a worker keeps the checkpoints it wrote in, for segments that start from them without a"
            " download (unset: min(4096, the host's memory / 8))"),
    Setting("PBT_AFFINITY_WAIT_MS", _number(int, 0), 30_000, "an integer >= 0 (ms; 0: plain FIFO)",
            "how long a queued segment may be passed over for the worker holding its start checkpoint (a worker"
            " takes its own segments first from the first 64 queued, and never idles for one)"),
    Setting("PBT_TRAINABLES", _prefixes, None, "comma-separated module names, e.g. workers,mypkg.train",
            "the only modules pbt-worker imports trainables from (unset: any)"),
    Setting("PBT_TENSORBOARD_DIR", _text, None, "a directory", "write per-member TensorBoard scalars under DIR/EXP/MEMBER"),
    Setting("PBT_METRICS_PORT", _number(int, 0, 65535), 0, "a port number (0: off)", "serve Prometheus /metrics"),
    Setting("PBT_METRICS_ADDR", _text, "0.0.0.0", "an address to bind", "the /metrics listen address"),
    Setting("PBT_PLUGINS", modules, None, "comma-separated module names, e.g. myrules,lab.pbt_rules",
            "the modules whose plug-in rules (`exploit.rule`/`explore.rule` = \"module:callable\") a `pbt-arbiter` may "
            "import (and `replay_decisions` in any process)"),
    Setting("PBT_ARBITER_NAME", _text, None, "a consumer name", "the arbiter's consumer name (default host-pid)"),
    Setting("PBT_CLAIM_IDLE_MS", _number(int, 1), 30_000, "an integer >= 1 (ms)",
            "reclaim events another arbiter left unacknowledged this long"),
    Setting("PBT_BLOCK_MS", _number(int, 1), 1000, "an integer >= 1 (ms)", "how long an arbiter's read blocks"),
    Setting("PBT_REAP_GRACE_MS", _number(int, 0), 10_000, "an integer >= 0 (ms)",
            "requeue a segment whose job left the queue but never started after this long"),
    Setting("PBT_REAP_INTERVAL_MS", _number(int, 0), 2000, "an integer >= 0 (ms; 0: no reaper)",
            "how often an arbiter looks for segments of dead workers"),
    Setting("PBT_EVENTS_RETENTION_S", _number(float), 5.0, f"{_SECONDS} (< 0 keeps all)",
            "trim decided events older than this from each events stream (an ended experiment's: all)"),
    Setting("PBT_LOG_LEVEL", _choice(LOG_LEVELS, upper=True), None, " | ".join(LOG_LEVELS),
            "log level (default INFO for the daemons, WARNING for `pbt`)"),
    Setting("PBT_DASHBOARD_TOKEN", _secret, None, f"at least {MIN_TOKEN_CHARS} printable characters, no spaces",
            "the bearer token `pbt dashboard` requires (required unless it listens on loopback only)", secret=True),
    Setting("PBT_LOCAL_WORKERS", _number(int, 1, 256), 2, "an integer in [1, 256]", "`pbt local`'s worker processes"),
    Setting("PBT_LOCAL_DIR", _text, ".pbt-local", "a directory",
            "`pbt local`'s work directory; commands that read experiments look there when no Redis is named"),
    Setting("PBT_S3_ACCESS_KEY", _text, None, "an access key", "S3 credentials (else AWS_ACCESS_KEY_ID)", secret=True),
    Setting("PBT_S3_SECRET_KEY", _text, None, "a secret key", "S3 credentials (else AWS_SECRET_ACCESS_KEY)", secret=True),
    Setting("PBT_S3_ENDPOINT", _text, None, "host:port", "S3 endpoint when the store URL names none"),
    Setting("PBT_S3_SECURE", _bool, True, "true or false", "HTTPS to the S3 endpoint when the URL does not say"),
    Setting("PBT_S3_CONNECT_TIMEOUT", _number(float, 0.001), 5.0, f"{_SECONDS} > 0", "S3 connect timeout"),
    Setting("PBT_S3_READ_TIMEOUT", _number(float, 0.001), 120.0, f"{_SECONDS} > 0", "S3 read timeout (per socket read)"),
    Setting("PBT_S3_RETRIES", _number(int, 0, 100), 3, "an integer in [0, 100]", "HTTP retries per S3 request"),
    Setting("PBT_STORE_RETRY_S", _number(float, 0), 120.0, f"{_SECONDS} >= 0",
            "how long uploads and downloads retry while the store is unreachable"),
)
SETTINGS: dict[str, Setting] = {s.env: s for s in TABLE}


def read(env: str, environ: Mapping[str, str] | None = None) -> Any:
    """The variable's value, parsed and validated; the setting's default when it is unset (or empty)."""
    s = SETTINGS[env]
    raw = (os.environ if environ is None else environ).get(env)
    if raw is None or raw == "":
        return s.default
    try:
        return s.parse(raw)
    except (TypeError, ValueError):
        shown = "***" if s.secret else repr(raw)
        raise SettingError(f"{env}={shown}: expected {s.expects}") from None


def read_if_set(env: str, environ: Mapping[str, str] | None = None) -> Any:
    """The variable's validated value, or None when it is unset (not its default)."""
    if (os.environ if environ is None else environ).get(env) in (None, ""):
        return None
    return read(env, environ)


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Validate every ``PBT_*`` variable that is set: the first bad one raises its one-line error."""
    env = os.environ if environ is None else environ
    for name in sorted(SETTINGS):
        if name in env:
            read(name, env)


def markdown_table() -> str:
    """The README's settings reference."""
    rows = ["| variable | default | expects | what |", "|---|---|---|---|"]
    for s in TABLE:
        default = "" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.env}` | {default} | {s.expects.replace('|', chr(92) + '|')} | {s.doc} |")
    return "\n".join(rows)
