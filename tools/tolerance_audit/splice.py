"""Find every tolerance site and wrap it in a probe call, in a copy of the tree (never in place).

A *site* is

* a comparison ``x < tol`` (or ``<=``, ``>``, ``>=``, either side) where the
  tolerance side is written as a number in scientific notation (``1e-5``) or
  names a ``*_TOLERANCE`` constant;
* a call to ``allclose``, ``isclose``, ``assert_close`` or ``assert_allclose``;
* ``actual == approx(expected, ...)``.

Sites are looked for in every test file and in the milestone modules' ``check``
(the verdict a learner's run gets) plus the helpers it calls (:data:`CHECK_HELPERS`).
The rewrite only inserts text on the lines it touches, never a newline, so a
traceback's line numbers are the original's.
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ml60.milestones import MILESTONES

# Functions a milestone's check() relies on, beside check itself, that hold tolerances of their own.
CHECK_HELPERS = {
    "phase1_foundation/p1_autograd.py": {"the_graph", "why_zero_grad", "data_versus_detach"},
    "phase1_foundation/p1_train.py": {"_check_baselines"},
    "phase2_depth/p2_eval.py": {"imbalance_problems"},
    "phase2_depth/p2_search.py": {"problems_with_test_passes"},
}
SCIENTIFIC = re.compile(r"\d(\.\d*)?e-\d+")
CLOSE_FUNCTIONS = {"allclose", "isclose", "assert_close", "assert_allclose"}
PROBE = "__import__('tests._tolprobe', fromlist=['_'])"


@dataclass
class Site:
    id: int
    file: str
    line: int
    function: str
    kind: str                 # "compare" | "close" | "approx"
    text: str                 # the site's source, on one line
    tolerance: str = ""       # compare: the tolerance side; close: the keyword arguments given
    op: str = ""              # compare: "<", "<=", ">", ">=" with the measured value on the left
    function_called: str = ""  # close: allclose / isclose / assert_close / assert_allclose
    extra: dict = field(default_factory=dict)


def audited_files(root: Path) -> dict[str, set[str] | None]:
    """{file: the functions audited in it (None: the whole file)}."""
    files: dict[str, set[str] | None] = {}
    for milestone in MILESTONES:
        rel = milestone.module.replace(".", "/") + ".py"
        if (root / rel).is_file():
            files[rel] = {"check"} | CHECK_HELPERS.get(rel, set())
    for path in sorted([*root.glob("tests/*.py"), *root.glob("tests/exercises/*.py")]):
        if path.name not in ("conftest.py", "_tolprobe.py") and path.name.startswith("test_"):
            files[str(path.relative_to(root))] = None
    return files


def looks_like_tolerance(source: str) -> bool:
    return bool(SCIENTIFIC.search(source)) or "TOLERANCE" in source


def called_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


class SiteFinder(ast.NodeVisitor):
    FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}

    def __init__(self, text: str, only: set[str] | None):
        self.text, self.only, self.found, self.stack = text, only, [], []

    def source(self, node) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def audited(self) -> bool:
        return self.only is None or bool(self.stack and self.stack[0] in self.only)

    def visit_Compare(self, node):
        if self.audited() and len(node.ops) == 1:
            op, left, right = node.ops[0], node.left, node.comparators[0]
            if type(op) in self.OPS:
                symbol = self.OPS[type(op)]
                left_src, right_src = self.source(left), self.source(right)
                if looks_like_tolerance(right_src) and not looks_like_tolerance(left_src):
                    self.found.append(("compare", node, dict(measured=left, tolerance=right_src, op=symbol)))
                elif looks_like_tolerance(left_src) and not looks_like_tolerance(right_src):
                    self.found.append(("compare", node, dict(measured=right, tolerance=left_src, op=self.FLIP[symbol])))
            elif isinstance(op, ast.Eq) and isinstance(right, ast.Call) and called_name(right) == "approx":
                self.found.append(("approx", node, dict(measured=left, call=right)))
        self.generic_visit(node)

    def visit_Call(self, node):
        if self.audited() and called_name(node) in CLOSE_FUNCTIONS and len(node.args) >= 2:
            self.found.append(("close", node, dict(call=node)))
        self.generic_visit(node)


def line_starts(raw: bytes) -> list[int]:
    starts, position = [0], 0
    for line in raw.split(b"\n"):
        position += len(line) + 1
        starts.append(position)
    return starts


def splice_file(text: str, rel: str, only: set[str] | None, first_id: int) -> tuple[bytes, list[Site]]:
    """(the rewritten file, its sites).  Nested sites (a site inside another) keep only the outer one."""
    raw = text.encode("utf-8")
    starts = line_starts(raw)

    def at(lineno: int, col: int) -> int:   # ast columns are UTF-8 byte offsets
        return starts[lineno - 1] + col

    finder = SiteFinder(text, only)
    tree = ast.parse(text)
    functions = {id(n): f.name for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    finder.visit(tree)
    inserts, spans, sites = [], [], []
    for kind, node, parts in finder.found:
        span = (at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset))
        if any(a <= span[0] and span[1] <= b or span[0] <= a and b <= span[1] for a, b in spans):
            continue
        spans.append(span)
        site = Site(id=first_id + len(sites), file=rel, line=node.lineno, function=functions.get(id(node), ""),
                    kind=kind, text=" ".join(ast.get_source_segment(text, node).split()))

        def wrap(expr, opening: str, closing: str) -> None:
            inserts.append((at(expr.lineno, expr.col_offset), 1, opening.encode()))
            inserts.append((at(expr.end_lineno, expr.end_col_offset), 0, closing.encode()))

        if kind == "compare":
            site.tolerance, site.op = parts["tolerance"], parts["op"]
            wrap(parts["measured"], f"{PROBE}.compared({site.id}, (", f"), ({site.tolerance}))")
        elif kind == "approx":
            wrap(parts["measured"], f"{PROBE}.first({site.id}, (", "))")
            wrap(parts["call"], f"{PROBE}.approx_second({site.id}, (", "))")
        else:
            call = parts["call"]
            site.function_called = called_name(call)
            keywords = {k.arg: ast.get_source_segment(text, k.value) for k in call.keywords
                        if k.arg in ("atol", "rtol", "abs_tol", "rel_tol")}
            site.tolerance = ", ".join(f"{k}={v}" for k, v in keywords.items())
            given = "".join(f", {k}=({v})" for k, v in keywords.items())
            wrap(call.args[0], f"{PROBE}.first({site.id}, (", "))")
            wrap(call.args[1], f"{PROBE}.close_second({site.id}, {site.function_called!r}, (", f"){given})")
        sites.append(site)
    # At one position, closers (0) go before openers (1); from the end, so earlier offsets stay valid.
    for position, _, text_in in sorted(inserts, key=lambda t: (t[0], t[1]), reverse=True):
        raw = raw[:position] + text_in + raw[position:]
    return raw, sites


def splice_tree(source: Path, destination: Path) -> list[Site]:
    """Copy ``source``'s course (no runs, caches or virtual environment) to ``destination`` and splice it."""
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "data", ".cache", "__pycache__", "*.pyc", ".pytest_cache",
                                    ".hypothesis", "mutants", ".audit", "*.egg-info")
    shutil.copytree(source, destination, ignore=ignore)
    shutil.copy2(Path(__file__).with_name("probe.py"), destination / "tests" / "_tolprobe.py")
    sites: list[Site] = []
    for rel, only in audited_files(destination).items():
        path = destination / rel
        new, found = splice_file(path.read_text(encoding="utf-8"), rel, only, len(sites))
        path.write_bytes(new)
        compile(new, rel, "exec")   # a splice that breaks the syntax fails here, not in the middle of a run
        sites += found
    return sites


def as_dicts(sites: list[Site]) -> list[dict]:
    return [asdict(s) for s in sites]
