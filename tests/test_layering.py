"""The layers stay one way: services <- clients <- trainer. Every `equiprobe.*` import is read,
at module level and inside functions alike (many imports sit in functions to keep the client
install light, which would otherwise hide a dependency): none may go up a layer, and no two
modules may import each other, directly or round a longer circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("services", "clients", "trainer")  # each may import only those before it and itself


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["equiprobe", *parts])


def modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The equiprobe modules a file imports (a `from package import module` counts the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # equiprobe.x.y.attribute -> the module that holds it
                target = target.rpartition(".")[0]
            if target.startswith("equiprobe.") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    edges = graph()
    assert "equiprobe.clients.store" in edges["equiprobe.clients.index_build"]
    assert "equiprobe.clients.corpus" in edges["equiprobe.clients.datasets"]  # imported inside a function
    assert "equiprobe.services.contract" in edges["equiprobe.clients.embedding"]


def test_no_import_goes_up_a_layer():
    upward = sorted(f"{a} imports {b}" for a, targets in graph().items() for b in targets if layer(b) > layer(a))
    assert not upward, "imports against services <- clients <- trainer:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_circle_of_three():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
