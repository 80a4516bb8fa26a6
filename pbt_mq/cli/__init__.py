"""Command line entry points: ``pbt``, ``pbt-worker``, ``pbt-arbiter``."""

from pbt_mq.cli.pbt import arbiter_main, main, worker_main

__all__ = ["arbiter_main", "main", "worker_main"]
