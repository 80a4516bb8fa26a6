"""What every command shares: one-line errors, options bound to ``PBT_*`` settings, logging, exit codes.

An option bound to a setting has a ``FromEnv`` default; once the command line is parsed,
``resolve`` replaces it with the setting's value, read and validated by ``core.settings``.
Nothing is parsed from the environment while the parser is built, and ``run`` validates every
``PBT_*`` variable before doing anything: a bad value is one line naming it, exit 2. A command
that reads experiments (``state_options``: ``--redis`` or ``--local DIR``) runs inside
``tools.workdir.redis_for``, which finds them, on a fleet's Redis or in a ``pbt local`` work dir.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis

from pbt_mq.broker.connect import RedisUnavailable
from pbt_mq.config.reader import ConfigError
from pbt_mq.core import settings
from pbt_mq.core.settings import SettingError
from pbt_mq.core.terminal import SafeStream
from pbt_mq.observe.lineage import NoCheckpoint
from pbt_mq.state.experiment import UnknownExperiment
from pbt_mq.store.base import StoreError
from pbt_mq.tools.workdir import WorkDirError, redis_for

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124


class UsageError(ValueError):
    """Bad input on the command line; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class FromEnv:
    """The default of an option bound to a ``PBT_*`` setting, resolved after parsing."""

    def __init__(self, env: str) -> None:
        self.env = env

    def __repr__(self) -> str:
        return f"${self.env}"


def env_option(p: argparse.ArgumentParser, *flags: str, env: str, help: str, **kw: Any) -> None:
    """A flag whose default is a ``PBT_*`` setting; given on the command line, it is checked as the setting
    is (the same bounds, the same line: ``--workers 0`` is refused as ``PBT_LOCAL_WORKERS=0`` would be)."""
    setting = settings.SETTINGS[env]
    shown = "" if setting.default is None else f", default {setting.default}"
    if kw.get("type") in (int, float):
        kw["type"] = _checked(setting, kw["type"])
    p.add_argument(*flags, default=FromEnv(env), help=f"{help} (env {env}{shown})", **kw)


def _checked(setting: settings.Setting, cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return cast(setting.parse(text))
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {setting.expects}, got {text!r}") from None

    parse.__name__ = cast.__name__
    return parse


def redis_option(p: Any) -> None:
    env_option(p, "--redis", env="PBT_REDIS_URL", help="Redis URL: redis://[user:pass@]host:port/db, rediss:// for TLS")


def state_options(p: argparse.ArgumentParser) -> None:
    """``--redis URL`` or ``--local DIR``, for a command that reads experiments: it runs inside
    ``tools.workdir.redis_for`` (``guard``), which finds them, with ``a.redis`` set to where."""
    where = p.add_mutually_exclusive_group()
    redis_option(where)
    where.add_argument("--local", default=None, metavar="DIR",
                       help="read the experiments a `pbt local` keeps in DIR, live or saved (default, when neither"
                            " --redis nor PBT_REDIS_URL is given: ./$PBT_LOCAL_DIR if it holds saved state)")


def log_option(p: argparse.ArgumentParser) -> None:
    env_option(p, "--log-level", env="PBT_LOG_LEVEL", help="log level", type=str.upper, choices=settings.LOG_LEVELS)


def resolve(ns: argparse.Namespace) -> argparse.Namespace:
    """Replace every ``FromEnv`` default with its setting's validated value; ``ns.origin`` says, for
    each such option, whether that value came from its variable ("env") or its default ("default")
    (an option absent from it was given on the command line)."""
    origin = {}
    for name, value in list(vars(ns).items()):
        if isinstance(value, FromEnv):
            origin[name] = "env" if settings.read_if_set(value.env) is not None else "default"
            setattr(ns, name, settings.read(value.env))
    ns.origin = origin
    return ns


def setup_logging(level: str | None, default: str, prog: str = "pbt") -> None:
    """Daemons (default INFO) log with time and source; the CLI (default WARNING) says what it has to say
    as ``pbt: MESSAGE``, like its errors."""
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s" if default != "WARNING" else f"{prog}: %(message)s"
    logging.basicConfig(level=getattr(logging, (level or default).upper(), logging.INFO), format=fmt)


def guard(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run a command; a known failure is one line on stderr and an exit code, never a traceback."""
    try:
        if "local" not in vars(args):  # not a command that reads experiments (state_options)
            return fn(args)
        with redis_for(args) as url:
            args.redis = url
            return fn(args)
    except (ConfigError, UsageError, SettingError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RedisUnavailable, StoreError, UnknownExperiment, NoCheckpoint, WorkDirError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except redis.RedisError as exc:  # e.g. the live `pbt local` a reader attached to stopped meanwhile
        print(f"{prog}: error: Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pbt lineage EXP | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (RuntimeError, ImportError, OSError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # noqa: BLE001 - a record no check foresaw: one line, the traceback on request
        logging.getLogger(__name__).debug("the traceback", exc_info=True)
        print(f"{prog}: error: unexpected {type(exc).__name__}: {exc} (a record written by hand? "
              "PBT_LOG_LEVEL=DEBUG shows the traceback)", file=sys.stderr)
        return EXIT_FAIL


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, default_level: str,
        fn: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Validate the environment, parse, resolve settings, set up logging, run (``fn`` or ``a.fn``)."""
    try:
        settings.check_environment()
    except SettingError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    a = resolve(parser.parse_args(argv))
    if getattr(a, "fn", None) not in RAW_OUTPUT:  # pbt top draws with ANSI itself, on cleaned data
        sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)  # type: ignore[assignment]
    setup_logging(getattr(a, "log_level", None) or settings.read("PBT_LOG_LEVEL"), default_level, parser.prog)
    return guard(fn or a.fn, a, parser.prog)


RAW_OUTPUT: set[Callable[..., Any]] = set()  # commands whose output is not escaped (``core.terminal``)
