"""``pbt``: the command line; ``pbt-worker`` and ``pbt-arbiter`` are in ``cli.daemons``.

Every option can also come from the environment (shown in ``--help``; the table is
``core.settings``), so a deployment configures processes with env vars alone. Errors print
one line and exit 2 (bad input) or 1 (a service or the run failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pbt_mq.cli import dashboard, experiments, inspect, tools
from pbt_mq.cli.daemons import arbiter_main, worker_main
from pbt_mq.cli.options import Parser, run

__all__ = ["arbiter_main", "build_pbt_parser", "main", "worker_main"]


def build_pbt_parser() -> argparse.ArgumentParser:
    p = Parser(prog="pbt", description="Population Based Training over Redis and S3.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    experiments.register(sub)
    inspect.register(sub)
    tools.register(sub)
    dashboard.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_pbt_parser(), argv, "WARNING")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
