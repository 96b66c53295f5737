"""The package's import graph: no cycles (type-checking imports count too), and serving never
imports calibration (STYLE: the code that answers a query only reads what choosing on val
stored)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package a file imports, anywhere (``if TYPE_CHECKING:`` blocks too: a
    cycle in the types is still a cycle in the design)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrieval"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("retrieval")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: (_imports(path) & set(modules)) - {name} for name, path in modules.items()}


def test_no_import_cycles() -> None:
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        for dep in graph[module]:
            assert dep not in stack, "import cycle: " + " -> ".join([*stack, dep])
            if dep not in done:
                visit(dep, [*stack, dep])
        done.add(module)

    for module in graph:
        visit(module, [module])


def test_serving_never_imports_calibration() -> None:
    for module, deps in import_graph().items():
        if module.startswith("retrieval.serving"):
            assert not any(d.startswith("retrieval.calibration") for d in deps), module
