"""The package's rooms: data flows downward, nothing imports the command line, no module grows past 500 lines.

Read from the source (every ``import`` statement, those inside functions included, those under
``if TYPE_CHECKING:`` excluded), so that a lazy import cannot hide a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "egc_lite"
#: Each room's level: a module may import its own room and rooms of a lower level only.
LEVELS = {
    "errors": 0,
    "progress": 1, "precision": 1, "weights": 1,
    "metrics": 2,
    "coding": 3,
    "data": 4,
    "models": 5,
    "backbone": 6,
    "guide": 7,
    "sampling": 8,
    "codecs": 9,
    "training": 10, "evaluate": 10,
    "cli": 11,
}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in MODULES and t != name:
                found.add(t)
                break
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _room(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_room_has_a_level():
    assert {_room(m) for m in MODULES} - {None} <= set(LEVELS)


def test_rooms_import_only_downward():
    upward = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                    if _room(a) and _room(b) and _room(a) != _room(b) and LEVELS[_room(b)] >= LEVELS[_room(a)])
    assert not upward, "imports against the rooms' order (tests/test_layout.py LEVELS): " + ", ".join(upward)


def test_no_module_imports_one_that_imports_it():
    seen: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for dep in sorted(GRAPH[node]):
            if seen.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in seen:
                walk(dep, stack + [dep])
        seen[node] = 2

    for name in sorted(GRAPH):
        if name not in seen:
            walk(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_nothing_imports_the_command_line():
    assert not [m for m, deps in GRAPH.items() if "egc_lite.cli" in deps]


def test_no_module_is_longer_than_the_limit():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their parts): {long}"
