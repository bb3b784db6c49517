"""The stub proof, on a scratch copy of the tree, in course order.

The copy starts with every exercise stubbed (what a learner gets after
``make exercise`` on every milestone).  Then, milestone by milestone, the
reference comes back, as if the learner had solved it:

* after restoring milestone k, its quick run succeeds and passes its own
  ``check(metrics)``, and its exercise checks are all solved, with every
  later milestone still stubbed.  So stubbing any later milestone leaves
  milestone k's checks and run green (d);
* milestone k+1, still stubbed, has every exercise reported "not started"
  (b, with the real stub text in the real file), and its quick run stops with
  the ``NotImplementedError`` naming one of its own exercises: the one the
  learner is to write next, not a crash somewhere else (d).

The wrong answers (c) are proven in ``tests/test_exercises.py``, in process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ml60 import exercises
from ml60.milestones import MILESTONES

COPIED = ("common", "ml60", "phase1_foundation", "phase2_depth", "phase3_production", "tests", "deploy",
          "benchmarks", "Dockerfile", "pyproject.toml", "Makefile")
RAISED_RE = re.compile(r"NotImplementedError: (p\d-[a-z]+\.\d+)")
# The smallest quick run that still walks the whole code path (the milestones' own tests use the same flags).
SMALLEST = {"p1-train": ("--budget", "1"), "p2-search": ("--trials", "2"), "p3-onnx": ("--rounds", "1")}


def scratch_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in COPIED:
        source = exercises.ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, root / name)
    return root


def python(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m ...`` inside the scratch tree: its own copies of the packages come first on the path."""
    env = {**os.environ, "ML60_RUNS_DIR": str(root / "runs"), "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def verdicts(root: Path, *milestones: str) -> dict[str, str]:
    out = python(root, "-m", "ml60", "check-json", *milestones)
    assert out.returncode == 0, f"check-json failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def metrics_problems(root: Path, milestone_id: str) -> list[str]:
    """The milestone's own check(metrics) on the run it just wrote, evaluated inside the scratch tree."""
    code = (f"import json, importlib; from ml60.milestones import by_id; from common.runs import read_metrics, run_path; "
            f"m = by_id({milestone_id!r}); print(json.dumps(importlib.import_module(m.module).check("
            f"read_metrics(run_path(m.id, quick=True)))))")
    out = python(root, "-c", code)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_stubs_in_course_order(tmp_path):
    root = scratch_tree(tmp_path)
    ids = {m.id: [ex.id for ex in exercises.all_exercises(root) if ex.milestone == m.id] for m in MILESTONES}
    exercises.make_stubs("all", root=root)
    assert all(ex.is_stub for ex in exercises.all_exercises(root)), "make_stubs left a block unstubbed"
    problems, log = [], []

    def expect_stubbed(milestone_id: str, found: dict[str, str]) -> None:
        if not ids[milestone_id]:
            return
        not_started = [i for i in ids[milestone_id] if found.get(i) == "not started"]
        if len(not_started) != len(ids[milestone_id]):
            problems.append(f"{milestone_id} stubbed: verdicts {found}, expected every exercise 'not started'")
        start = time.perf_counter()
        run = python(root, "-m", "ml60", "run", milestone_id, "--quick", *SMALLEST.get(milestone_id, ()))
        raised = RAISED_RE.findall(run.stdout + run.stderr)
        if run.returncode == 0 or not raised or raised[-1] not in ids[milestone_id]:
            tail = (run.stdout + run.stderr)[-1500:]
            problems.append(f"{milestone_id} stubbed: the quick run should stop on one of its own exercises "
                            f"{ids[milestone_id]}; exit {run.returncode}, raised {raised}:\n{tail}")
        log.append(f"{milestone_id} stubbed: {len(not_started)}/{len(ids[milestone_id])} not started, the run stops at "
                   f"{raised[-1] if raised else '?'} ({time.perf_counter() - start:.0f}s)")

    first = MILESTONES[0].id
    expect_stubbed(first, verdicts(root, first))
    for k, milestone in enumerate(MILESTONES):
        after = MILESTONES[k + 1].id if k + 1 < len(MILESTONES) else None
        if ids[milestone.id]:
            exercises.restore(milestone.id, root=root)
        start = time.perf_counter()
        run = python(root, "-m", "ml60", "run", milestone.id, "--quick", *SMALLEST.get(milestone.id, ()))
        if run.returncode != 0:
            problems.append(f"{milestone.id} restored, later milestones stubbed: its quick run failed "
                            f"(exit {run.returncode}):\n{(run.stdout + run.stderr)[-2000:]}")
        else:
            problems += [f"{milestone.id}: {p}" for p in metrics_problems(root, milestone.id)]
        found = verdicts(root, *[m for m in (milestone.id, after) if m])   # one pytest process for both
        unsolved = {i: found.get(i, "no verdict") for i in ids[milestone.id] if found.get(i) != "solved"}
        if unsolved:
            problems.append(f"{milestone.id} restored, later milestones stubbed: exercises not solved: {unsolved}")
        log.append(f"{milestone.id} restored: run exit {run.returncode} ({time.perf_counter() - start:.0f}s), "
                   f"{len(ids[milestone.id]) - len(unsolved)}/{len(ids[milestone.id])} solved")
        if after:
            expect_stubbed(after, found)
    print("\n".join(log))
    assert not problems, "\n\n".join(problems)
    # Every block is the reference again: the files are byte for byte the originals.
    for ex in exercises.all_exercises(root):
        assert (root / ex.path).read_text() == (exercises.ROOT / ex.path).read_text(), f"{ex.path} differs after restore"
