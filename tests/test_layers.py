"""The package's import graph: no cycles, and serving never imports calibration (STYLE: the
code that answers a query only reads what choosing on val stored)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "retrieval"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _run_time_imports(path: Path) -> set[str]:
    """Modules of the package imported at run time (``if TYPE_CHECKING:`` blocks skipped)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skipped |= {id(sub) for sub in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrieval"):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("retrieval")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _run_time_imports(path) & set(modules) for name, path in modules.items()}


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
