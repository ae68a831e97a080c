"""The package's shape: a few top-level modules, no import cycles, no private names
imported across modules (read from the source with ``ast``, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffbir"

#: What may sit directly in ``src/diffbir`` besides the sub-packages.
TOP_LEVEL = {"__init__", "__main__", "errors"}


def _module_name(path: Path) -> str:
    parts = ["diffbir", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]):
    """``(imported module, imported names, line)`` for every import of a diffbir module
    in ``path``, at any depth (function-level imports included)."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diffbir":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "diffbir":
                continue
            names = [alias.name for alias in node.names]
            # ``from diffbir.pkg import module`` imports the module itself.
            submodules = [n for n in names if f"{target}.{n}" in known]
            for sub in submodules:
                yield f"{target}.{sub}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest:
                yield target, rest, node.lineno


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(name, path, known):
            if target in known and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_top_level_holds_few_modules():
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose <= TOP_LEVEL, f"modules directly in src/diffbir: {sorted(loose - TOP_LEVEL)}"
    assert len(loose) <= 5


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    modules = _modules()
    known = set(modules)
    offences = []
    for name, path in modules.items():
        for target, names, line in _imports(name, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                offences.append(f"{where}: from {target} import {', '.join(private)}")
    assert not offences, "private names imported from other modules:\n" + "\n".join(offences)


def test_the_checks_see_a_cycle_and_a_private_import(tmp_path):
    """The walker itself: a two-module cycle is found, and so is a private import."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from diffbir.x import _hidden, shown\n")
    found = list(_imports("diffbir.m", source, {"diffbir.x"}))
    assert found == [("diffbir.x", ["_hidden", "shown"], 2)]
