"""Plug-in rules: ``exploit.rule`` / ``explore.rule = "module:callable"``, imported only from an allowlist.

An experiment file must not make arbiters import arbitrary code, so naming a plug-in is not enough:
``pbt launch`` checks the form only, and a process imports the module only if it is on its allowlist
(``pbt-arbiter --plugins mod1,mod2``, or ``PBT_PLUGINS``; exact module names, no prefixes). The
callable is either

* a subclass of ``rules.base.ExploitRule`` / ``ExploreRule`` (built with the experiment's spec, once per
  experiment), or
* a function with the same pure signature as the built-ins' methods: exploit
  ``choose(snapshot, member, score, rng) -> donor | None``, explore ``explore(hparams, ctx, rng) ->
  (hparams, ops)``.

Every draw must come from the ``random.Random`` passed in (seeded per decision), and nothing else may
be read: that is what lets ``state.lineage.replay_decisions`` re-derive a plug-in's decisions from the
log (with the same allowlist in the replaying process). A plug-in exploit rule always runs in Python
(``decide.lua`` only records the score), on a board of at most ``BOARD_MAX`` members, best first.
Whatever a plug-in returns is checked here: a donor must be another member of the board, values must
be the experiment's hyperparameters, inside their spaces. A plug-in that raises, or returns something
else, fails that decision like any error (the event is retried, then dead-lettered with the error).
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pbt_mq.core import settings
from pbt_mq.core.model import Lineage
from pbt_mq.rules.base import ExploitRule, ExploitSpec, ExploreContext, ExploreRule, ExploreSpec, Snapshot

PLUGIN_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
BOARD_MAX = 256  # the most members a plug-in exploit rule sees (and its lineage record keeps), best first

_allowed: frozenset[str] | None = None


class PluginError(ValueError):
    """A plug-in this process may not, or cannot, use; str() says which and what to do."""


def is_plugin(name: str) -> bool:
    return ":" in name


def form_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a plug-in reference (checked by ``pbt launch``, which imports nothing)."""
    return None if PLUGIN_RE.match(name) else f"{name!r} is not a plug-in reference like 'package.module:callable'"


def allow_plugins(modules: Iterable[str] | None) -> None:
    """This process's allowlist (``pbt-arbiter --plugins``); None: read ``PBT_PLUGINS`` when first needed."""
    global _allowed
    _allowed = None if modules is None else frozenset(modules)


def allowed() -> frozenset[str]:
    if _allowed is None:
        return frozenset(settings.read("PBT_PLUGINS") or ())
    return _allowed


def _import(target: str, kind: str) -> Any:
    module, _, attr = target.partition(":")
    ok = allowed()
    if module not in ok:
        have = ", ".join(sorted(ok)) or "empty"
        raise PluginError(f"{kind}.rule {target!r}: module {module!r} is not on this process's plug-in allowlist "
                          f"({have}); allow it with `pbt-arbiter --plugins {module}` or PBT_PLUGINS={module}")
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except Exception as exc:  # whatever the module raises while importing
        raise PluginError(f"{kind}.rule {target!r}: importing {module!r} failed: {type(exc).__name__}: {exc}") from None
    if obj is None:
        raise PluginError(f"{kind}.rule {target!r}: module {module!r} has no attribute {attr!r}")
    if not callable(obj):
        raise PluginError(f"{kind}.rule {target!r}: {attr!r} is not callable")
    return obj


def load_exploit(spec: ExploitSpec) -> ExploitRule:
    obj = _import(spec.rule, "exploit")
    if isinstance(obj, type):
        if not issubclass(obj, ExploitRule):
            raise PluginError(f"exploit.rule {spec.rule!r}: a class must subclass pbt_mq.rules.base.ExploitRule")
        return PluginExploit(spec, obj(spec).choose)
    return PluginExploit(spec, obj)


def load_explore(spec: ExploreSpec) -> ExploreRule:
    obj = _import(spec.rule, "explore")
    if isinstance(obj, type):
        if not issubclass(obj, ExploreRule):
            raise PluginError(f"explore.rule {spec.rule!r}: a class must subclass pbt_mq.rules.base.ExploreRule")
        return PluginExplore(spec, obj(spec))
    return PluginExplore(spec, obj)


class PluginExploit(ExploitRule):
    """A plug-in's choose(), checked: it runs in Python (``lua = None``) and returns a member of the board."""

    lua = None

    def __init__(self, spec: ExploitSpec, choose: Callable[..., Any]) -> None:
        super().__init__(spec)
        self.name = spec.rule  # type: ignore[misc]
        self._choose = choose

    def choose(self, snapshot: Snapshot, member: str, score: float, rng: random.Random) -> str | None:
        donor = self._choose(list(snapshot), member, score, rng)
        on_board = {m for m, _ in snapshot} - {member}
        if donor is not None and donor not in on_board:
            raise PluginError(f"exploit rule {self.name} returned {donor!r}: not None nor another member of the board")
        return donor


class PluginExplore(ExploreRule):
    """A plug-in's explore(), checked: the experiment's hyperparameters, each inside its space."""

    def __init__(self, spec: ExploreSpec, inner: ExploreRule | Callable[..., Any]) -> None:
        super().__init__(spec)
        self.name = spec.rule  # type: ignore[misc]
        self.inner = inner

    def history_size(self, population: int) -> int:
        return self.inner.history_size(population) if isinstance(self.inner, ExploreRule) else 0

    def replay_history(self, records: Sequence[Lineage], ops: Sequence[str]) -> Sequence[Lineage]:
        return self.inner.replay_history(records, ops) if isinstance(self.inner, ExploreRule) else ()

    def explore(self, hparams: dict[str, Any], ctx: ExploreContext, rng: random.Random) -> tuple[dict[str, Any], list[str]]:
        fn = self.inner.explore if isinstance(self.inner, ExploreRule) else self.inner
        out = fn(dict(hparams), ctx, rng)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict) and isinstance(out[1], list)):
            raise PluginError(f"explore rule {self.name} must return (hparams, ops), got {type(out).__name__}")
        new, ops = out
        if set(new) != set(ctx.spaces):
            raise PluginError(f"explore rule {self.name} returned hyperparameters {sorted(new)}, "
                              f"not the experiment's {sorted(ctx.spaces)}")
        for name, value in new.items():
            if not ctx.spaces[name].contains(value):
                raise PluginError(f"explore rule {self.name} returned {name}={value!r}, outside hparams.{name}")
        return dict(new), [str(op) for op in ops]
