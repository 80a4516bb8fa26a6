"""Shared by the contract tests: the version range pyproject.toml declares for a dependency."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def declared(name: str) -> Requirement:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0] == name)


def in_range(name: str, version: str) -> bool:
    return declared(name).specifier.contains(Version(version), prereleases=True)
