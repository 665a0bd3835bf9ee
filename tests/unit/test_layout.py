"""The house's rules (issue #18), checked on the import graph of `sidecar/`: imports go one way.

Imports inside `if TYPE_CHECKING:` are annotations only and do not count; imports inside functions (deferred,
to keep start-up light) count like the others, except for the cycle check, which is about import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "sidecar"
LEAVES = ("sidecar.issues", "sidecar.memo", "sidecar.settings", "sidecar.explanation")
SPINE = ("sidecar.config", "sidecar.runtime", "sidecar.pipeline")
TRANSPORTS = ("sidecar.transports.grpc_lean", "sidecar.transports.http", "sidecar.transports.grpcio")
"""Interchangeable transports; `transports.ext_authz` (the CheckRequest adapter both gRPC engines use),
`transports.status` and `transports.listener` are shared parts of the family, not transports."""
ABOVE_WINGS = ("sidecar.config", "sidecar.runtime", "sidecar.pipeline", "sidecar.serve", "sidecar.transports")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """The `sidecar.*` modules `path` imports (absolute names), skipping TYPE_CHECKING blocks."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(nodes: list[ast.stmt], nested: bool) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target.startswith("sidecar"):
                    yield target
                    for alias in node.names:  # `from . import reasons` imports a module
                        yield f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                yield from (a.name for a in node.names if a.name.startswith("sidecar"))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not top_level_only:
                    yield from walk(node.body, True)
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], (ast.stmt, ast.excepthandler)):
                    flat = [
                        c
                        for child in children
                        for c in (child.body if isinstance(child, ast.excepthandler) else [child])
                    ]
                    yield from walk(flat, nested)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")).body, False)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def real(targets: Iterator[str]) -> set[str]:
    """Only names that are modules or packages of ours (drop `from x import SomeClass` names)."""
    return {t for t in targets if t in MODULES}


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_import_nothing_of_ours(leaf: str) -> None:
    assert real(imports(MODULES[leaf])) == set()


@pytest.mark.parametrize("name", [m for m in MODULES if under(m, ("sidecar.policy", "sidecar.authorizers"))])
def test_wings_never_import_upward(name: str) -> None:
    upward = {t for t in real(imports(MODULES[name])) if under(t, ABOVE_WINGS)}
    assert upward == set(), f"{name} imports {sorted(upward)}"


@pytest.mark.parametrize("name", [m for m in MODULES if under(m, TRANSPORTS)])
def test_no_transport_imports_another(name: str) -> None:
    own = next(t for t in TRANSPORTS if under(name, (t,)))
    others = tuple(t for t in TRANSPORTS if t != own)
    bad = {
        t for t in real(imports(MODULES[name])) if under(t, others) or under(t, SPINE) or under(t, ("sidecar.serve",))
    }
    assert bad == set(), f"{name} imports {sorted(bad)}"


def test_the_spine_names_no_authorizer_type() -> None:
    from sidecar.authorizers.base import registry

    types = set(registry())
    for spine in SPINE:
        tree = ast.parse(MODULES[spine].read_text(encoding="utf-8"))
        named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in types}
        assert named == set(), f"{spine} names authorizer types {sorted(named)}"


def test_no_import_cycles_at_import_time() -> None:
    graph = {name: real(imports(path, top_level_only=True)) - {name} for name, path in MODULES.items()}
    for name in list(graph):  # a package's __init__ importing its own modules is how packages work, not a cycle
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
