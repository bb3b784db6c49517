"""The shape of the tree: imports between the course's own modules run one way (no cycles).

A cycle (two modules that import each other, even inside a function) means
neither can be read, tested or moved on its own, and which one Python
finishes first depends on who imported whom.  The import graph is read from
the source with ``ast``, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.foundation
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "ml60", "phase1_foundation", "phase2_depth", "phase3_production", "tools", "benchmarks")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    return files


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the course's modules it imports anywhere in its source (``from a import b`` may name a.b)."""
    graph = {}
    for name, path in files.items():
        named = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                named |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {other for other in named if other in files and other != name}
    return graph


def a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One chain of imports that comes back to where it started (``[a, b, a]``), or ``None`` (the standard
    library's topological sort finds it)."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_a_function_level_import_closes_a_cycle(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def late():\n    from c import thing\n")
    (tmp_path / "c.py").write_text("from a import x\n")
    (tmp_path / "d.py").write_text("import a\n")
    graph = import_graph({name: tmp_path / f"{name}.py" for name in "abcd"})
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(set(a_cycle(graph))) == ["a", "b", "c"]
    assert a_cycle({"a": {"b"}, "b": set()}) is None


def test_no_two_course_modules_import_each_other():
    files = module_files()
    assert len(files) > 50 and "ml60.cli" in files
    found = a_cycle(import_graph(files))
    assert found is None, f"an import cycle (move what both need into a module of its own): {' -> '.join(found)}"
