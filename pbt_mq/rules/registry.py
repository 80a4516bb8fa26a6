"""The rule registry: names in an experiment file to rule classes, for config validation, the
arbiter and lineage replay alike (see ``rules.base`` for the lifecycle)."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from pbt_mq.rules.base import ExploitRule, ExploitSpec, ExploreContext, ExploreRule, ExploreSpec
from pbt_mq.rules.crossover import Crossover
from pbt_mq.rules.exploit import NoExploit, Tournament, Truncation
from pbt_mq.rules.explore import NoExplore, Perturb, Resample
from pbt_mq.rules.plugins import allowed, form_problem, is_plugin, load_exploit, load_explore
from pbt_mq.rules.ttest import TTest


@dataclass(frozen=True)
class Entry:
    """A registered rule: where its class lives, and what it needs installed."""

    target: str  # "module:Class"
    requires: str | None = None  # a module that must be importable (an optional dependency)
    hint: str = ""  # how to install it


EXPLOIT_RULES: dict[str, Entry | type[ExploitRule]] = {
    "truncation": Truncation,
    "tournament": Tournament,
    "ttest": TTest,
    "none": NoExploit,
}
EXPLORE_RULES: dict[str, Entry | type[ExploreRule]] = {
    "perturb": Perturb,
    "resample": Resample,
    # by import path: PB2 needs numpy, an optional dependency, imported only when an experiment uses it
    "pb2": Entry("pbt_mq.rules.pb2:PB2", requires="numpy", hint="pip install 'pbt-mq[pb2]'"),
    "none": NoExplore,
    "crossover": Crossover,  # after "none": error messages list the rules in this order
}


class RuleError(ValueError):
    """A rule name that is not registered, or whose requirements are missing."""


def missing_requirement(registry: dict[str, Any], name: str) -> str | None:
    """Why rule ``name`` cannot run here, or None if it can (checked without importing it; a plug-in's
    form only: the allowlist and the import are the arbiter's to check)."""
    if is_plugin(name):
        return form_problem(name)
    entry = registry.get(name)
    if entry is None:
        kind = "exploit" if registry is EXPLOIT_RULES else "explore"
        return f"unknown {kind} rule {name!r}; one of {', '.join(registry)}, or a plug-in 'module:callable'"
    if isinstance(entry, Entry) and entry.requires and importlib.util.find_spec(entry.requires) is None:
        return f"{name!r} needs {entry.requires}: {entry.hint}"
    return None


def _load(registry: dict[str, Any], name: str) -> type:
    problem = missing_requirement(registry, name)
    if problem:
        raise RuleError(problem)
    entry = registry[name]
    if not isinstance(entry, Entry):
        return entry
    module, _, attr = entry.target.partition(":")
    return getattr(importlib.import_module(module), attr)


_built: dict[tuple[str, Any, Any], Any] = {}


def exploit_rule(spec: ExploitSpec) -> ExploitRule:
    """The exploit rule an experiment names, built once per spec."""
    key = ("exploit", spec, allowed() if is_plugin(spec.rule) else None)  # a plug-in: for this allowlist
    if key not in _built:
        _built[key] = load_exploit(spec) if is_plugin(spec.rule) else _load(EXPLOIT_RULES, spec.rule)(spec)
    return _built[key]


def explore_rule(spec: ExploreSpec) -> ExploreRule:
    """The explore rule an experiment names, built once per spec."""
    key = ("explore", spec, allowed() if is_plugin(spec.rule) else None)
    if key not in _built:
        _built[key] = load_explore(spec) if is_plugin(spec.rule) else _load(EXPLORE_RULES, spec.rule)(spec)
    return _built[key]


def exploit(snapshot: Any, member: str, score: float, spec: ExploitSpec, rng: Any) -> str | None:
    """The donor ``spec``'s rule picks (a shorthand for ``exploit_rule(spec).choose``)."""
    return exploit_rule(spec).choose(snapshot, member, score, rng)


def explore(hparams: dict[str, Any], spaces: dict[str, Any], spec: ExploreSpec, rng: Any,
            ctx: ExploreContext | None = None) -> tuple[dict[str, Any], list[str]]:
    """``spec``'s rule applied with a context of just the spaces (what perturb and resample read)."""
    ctx = ctx or ExploreContext(spaces, 0, "", 0, lambda x: x)
    return explore_rule(spec).explore(hparams, ctx, rng)
