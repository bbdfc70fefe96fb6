"""The package's architecture: every module lives in a sub-package that names its job, imports
form no cycle (modules or sub-packages), no module imports another's private names, and every
sub-package says what it is for."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

import ccrcc_grade

PKG = Path(ccrcc_grade.__file__).parent
SUBPACKAGES = ("core", "io", "ingest", "stats", "model", "evidence", "roi", "federated", "study", "serve", "tools")
# the order of the data's path: a sub-package imports only from those before it
LAYERS = {
    "core": 0,
    "io": 1,
    "ingest": 2,
    "stats": 2,
    "model": 3,
    "evidence": 4,
    "roi": 4,
    "federated": 4,
    "study": 5,
    "serve": 5,
    "tools": 6,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module -> the package modules it imports (at any depth, lazy imports included), and the
    private names imported from another module."""
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for name, f in mods.items():
        base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = (
                    ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level
                    else node.module or ""
                )
                if not target.startswith("ccrcc_grade"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    mod = full if full in mods else target
                    if mod in mods and mod != name:
                        edges[name].add(mod)
                    if alias.name.startswith("_") and alias.name != "__version__" and mod == target:
                        private.append((name, f"{target}.{alias.name}"))
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in mods and a.name != name}
    return edges, private


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else None


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_every_module_is_in_a_subpackage_with_a_docstring():
    mods = _modules()
    loose = sorted(
        m
        for m, f in mods.items()
        if m.count(".") == 1
        and f.name != "__init__.py"
        and m not in ("ccrcc_grade.cli", "ccrcc_grade.cli_multicentre", "ccrcc_grade.__main__")
    )
    assert loose == [], f"modules outside a sub-package: {loose}"
    for sub in SUBPACKAGES:
        doc = importlib.import_module(f"ccrcc_grade.{sub}").__doc__
        assert doc and len(doc.split()) >= 10, f"ccrcc_grade.{sub} needs a docstring saying what it is for"


def test_no_import_cycle_and_no_private_import():
    edges, private = _imports(_modules())
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"
    assert private == [], f"private names imported across modules: {private}"


def test_subpackages_import_only_the_layers_below():
    edges, _ = _imports(_modules())
    upward = sorted(
        (a, b)
        for a, bs in edges.items()
        for b in bs
        if _subpackage(a)
        and _subpackage(b)
        and _subpackage(a) != _subpackage(b)
        and LAYERS[_subpackage(b)] >= LAYERS[_subpackage(a)]
    )
    assert upward == [], f"imports against the data's direction: {upward}"


@pytest.mark.parametrize(
    "edges, cycle",
    [({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]), ({"a": {"b"}, "b": {"c"}}, None), ({"a": {"a"}}, ["a", "a"])],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert _cycle(edges) == cycle


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_public_exports_resolve(sub):
    """What a sub-package lists in ``__all__`` can be imported from it (lazily where heavy)."""
    mod = importlib.import_module(f"ccrcc_grade.{sub}")
    for name in getattr(mod, "__all__", []):
        assert getattr(mod, name) is not None, f"ccrcc_grade.{sub}.{name}"
    with pytest.raises(AttributeError):
        mod.no_such_name  # noqa: B018
