"""The house rules, checked on the source: imports run one way, and nothing grows too big to read.

The import graph is built from the AST of every module of ``pbt_mq``, imports inside functions
included (``if TYPE_CHECKING:`` blocks excluded, they never run). It must have no cycle, and
every import must point to the same subpackage or a lower layer (the README's "Layout").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pbt_mq"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
# Lower layers know nothing of higher ones; two subpackages on one layer know nothing of each other.
LAYERS = {
    "core": 0, "rules": 1, "config": 2, "broker": 3, "store": 3, "state": 4, "control": 5, "worker": 5,
    "observe": 6, "integrations": 6, "tools": 7, "dashboard": 7, "cli": 8,
}
# Imported only by a user's function or the tracker backends a worker is given: never by these.
NO_INTEGRATIONS = ("control", "cli", "tools", "observe", "state", "config", "broker", "store", "core", "rules")
# ...except that pbt-worker's start-up hands the tracking sender its backends: factories that import
# their library only when an experiment asks (tests/observe/test_inspect.py: importing it loads none).
INTEGRATIONS_ALLOWED = {("pbt_mq.cli.daemons", "pbt_mq.integrations.trackers")}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The pbt_mq modules ``name`` imports, wherever in the file (but not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:  # `from pkg import mod` imports the module pkg.mod
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pbt_mq.a\n"
                 "def g():\n    from pbt_mq import b\n    import pbt_mq.c\n")
    assert imports_of("pbt_mq.x", f, {"pbt_mq.a", "pbt_mq.b", "pbt_mq.c"}) == {"pbt_mq.b", "pbt_mq.c"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def test_imports_run_down_the_layers():
    bad = []
    for src, targets in graph().items():
        a = layer(src)
        for dst in targets:
            b = layer(dst)
            if a is None or b is None or a == b:
                continue
            if LAYERS[b] >= LAYERS[a]:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    assert bad == []


def test_the_arbiter_and_the_cli_never_import_an_integration():
    bad = [f"{src} -> {dst}" for src, targets in graph().items() for dst in targets
           if layer(src) in NO_INTEGRATIONS and layer(dst) == "integrations" and (src, dst) not in INTEGRATIONS_ALLOWED]
    assert bad == []


def names_in_strings(path: Path, prefix: str) -> list[str]:
    """String constants in code (docstrings aside) that start with ``prefix``: a module named for
    importlib or __import__ is an import the graph cannot see."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs and n.value.startswith(prefix)]


def test_no_layer_below_integrations_names_one_to_import_it(tmp_path):
    probe = tmp_path / "m.py"  # the check must see an import hidden in a string, and not a docstring
    probe.write_text('"""pbt_mq.integrations.doc"""\nimport importlib\n'
                     'm = importlib.import_module("pbt_mq.integrations.x")\n')
    assert names_in_strings(probe, "pbt_mq.integrations") == ["pbt_mq.integrations.x"]
    found = {name: hits for name, path in modules().items()
             if layer(name) is not None and LAYERS[layer(name)] <= LAYERS["integrations"] and layer(name) != "integrations"
             and (hits := names_in_strings(path, "pbt_mq.integrations"))}
    assert found == {}


def test_every_subpackage_is_on_a_layer():
    subpackages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages == set(LAYERS)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_or_class_too_big(name):
    path = modules()[name]
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name}: {size} lines"


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (absolute imports, anywhere in the file)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_rq_is_used_only_behind_its_adapter():
    """Every use of RQ is in broker/jobs.py (issue 25): one file to read when RQ changes."""
    users = sorted(name for name, path in modules().items() if "rq" in third_party_imports(path))
    assert users == ["pbt_mq.broker.jobs"]


def test_the_library_never_imports_its_examples():
    """workers/ is the examples, files of a checkout (issue 25): no module of pbt_mq imports them, and
    they are not an installed package (pyproject's packages.find)."""
    assert sorted(name for name, path in modules().items() if "workers" in third_party_imports(path)) == []
    pyproject = (PKG.parent / "pyproject.toml").read_text(encoding="utf-8")
    include = next(line for line in pyproject.splitlines() if line.startswith("include = "))
    assert "workers" not in include.split("#")[0] and 'workers = ["*.toml"]' not in pyproject


def test_one_tuple_of_redis_errors():
    """What a daemon waits out is spelled once (broker.cluster.REDIS_ERRORS), not per module (issue 25)."""
    spelled = sorted(name for name, path in modules().items()
                     if "RedisClusterException" in path.read_text(encoding="utf-8"))
    assert spelled == ["pbt_mq.broker.cluster"]


def test_test_modules_have_unique_names():
    """The tests import by basename (pytest's default rootdir mode, and ``from test_browser import``), so
    two test modules of one name in different folders fail to collect: CI once stopped on it."""
    names = [p.name for p in (PKG.parent / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
