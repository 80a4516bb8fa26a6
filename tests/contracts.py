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
    """The requirement on ``name`` in the dependencies or, failing that, in an extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return next(Requirement(d) for d in deps if re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0] == name)


def in_range(name: str, version: str) -> bool:
    return declared(name).specifier.contains(Version(version), prereleases=True)
