"""The layout the architecture page promises: no import cycle among the worker modules, and a pipeline
package that imports no Django (it takes plain parameters and returns frames and facts)."""

import ast
from pathlib import Path

import pytest

WORKERS = Path(__file__).resolve().parents[2] / "workers"


def module_name(path: Path) -> str:
    parts = path.relative_to(WORKERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


GRAPH = {module_name(p): imports_of(p) for p in WORKERS.rglob("*.py")}


def test_no_import_cycle_among_worker_modules():
    edges = {m: {i for i in imports if i in GRAPH and i != m} for m, imports in GRAPH.items()}
    state = {}

    def visit(module, trail):
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail("import cycle: " + " -> ".join(trail[trail.index(module) :] + [module]))
        state[module] = "open"
        for target in sorted(edges[module]):
            visit(target, trail + [module])
        state[module] = "done"

    for module in sorted(edges):
        visit(module, [])


def test_the_pipeline_imports_no_django():
    offenders = {
        m: sorted(i for i in imports if i.split(".")[0] in ("django", "webapp", "rest_framework"))
        for m, imports in GRAPH.items()
        if m.startswith("workers.pipeline")
    }
    assert {m: i for m, i in offenders.items() if i} == {}
