"""Whole-fleet tools built on the rest: ``pbt local``, ``pbt bench``, ``pbt study``."""
