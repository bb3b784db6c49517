"""The stub proof, on a scratch copy of the tree, in course order (its tests: tests/test_exercise_stubs*.py).

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

The course is proven in three stretches, one test each, so that ``make
test``'s two workers share them: phase 1; phase 2 (which reads no phase-1
run); phase 3, whose first milestone reads p2-cnn's quick model, taken from
the session's own quick run.  Each stretch starts from the tree a learner has
at its start: every earlier milestone restored, every later one stubbed.
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


def python(root: Path, *args: str, timeout: float = 300, data_env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    """``python -m ...`` inside the scratch tree: its own copies of the packages come first on the path.

    The runs use the offline stand-in data, as a learner's quick run does before the datasets are in
    place: this proof is about which code runs, and the real-data tests already cover the real files.
    ``data_env`` (``ML60_DATA_DIR``, ``ML60_CACHE_DIR``) overrides that where a stretch reads an upstream
    model: p3-onnx refuses a model trained on other data than the data it loads, as it should.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("ML60_DATA_DIR", "DATA_DIR")}
    env.update(data_env or {})
    env.update(ML60_RUNS_DIR=str(root / "runs"), PYTHONPATH=str(root), ML60_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=timeout, env=env)


def grade(root: Path, milestones: list[str], *, check_run_of: str | None = None,
          data_env: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """(every exercise verdict of ``milestones``, the problems ``check(metrics)`` finds in ``check_run_of``'s quick run).

    One process for both, inside the scratch tree: the verdicts come from one pytest run over the
    milestones' check files (what ``make check`` does), the problems from the milestone's own ``check``.
    """
    code = ("import json, importlib, sys; from ml60.grading import verdicts_json; from ml60.milestones import by_id; "
            "from common.runs import read_metrics, run_path; problems = []\n"
            "if sys.argv[1]:\n"
            "    m = by_id(sys.argv[1])\n"
            "    problems = importlib.import_module(m.module).check(read_metrics(run_path(m.id, quick=True)))\n"
            "print(json.dumps({'problems': problems, 'verdicts': json.loads(verdicts_json(sys.argv[2:]))}))")
    out = python(root, "-c", code, check_run_of or "", *milestones, data_env=data_env)
    assert out.returncode == 0, f"grading failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    graded = json.loads(out.stdout.strip().splitlines()[-1])
    return graded["verdicts"], graded["problems"]


def prove_course_order(tmp_path: Path, first: str, last: str, *, upstream_runs: dict[str, Path] | None = None,
                       data_env: dict[str, str] | None = None) -> None:
    """Stubs in course order, from milestone ``first`` to ``last`` (ids), on a scratch tree.

    ``upstream_runs``: finished quick runs of earlier milestones that this stretch reads, copied into the
    scratch tree's ``runs/<id>/quick/`` (phase 3 reads p2-cnn's model).  ``data_env``: the data settings
    those runs were made with, so that this stretch loads the same data (see :func:`python`).
    """
    root = scratch_tree(tmp_path)
    ids = {m.id: [ex.id for ex in exercises.all_exercises(root) if ex.milestone == m.id] for m in MILESTONES}
    order = [m.id for m in MILESTONES]
    start, stop = order.index(first), order.index(last) + 1
    exercises.make_stubs("all", root=root)
    assert all(ex.is_stub for ex in exercises.all_exercises(root)), "make_stubs left a block unstubbed"
    for earlier in order[:start]:
        if ids[earlier]:
            exercises.restore(earlier, root=root)
    for milestone_id, run in (upstream_runs or {}).items():
        shutil.copytree(run, root / "runs" / milestone_id / "quick")
    problems, log = [], []

    def expect_stubbed(milestone_id: str, found: dict[str, str]) -> None:
        if not ids[milestone_id]:
            return
        not_started = [i for i in ids[milestone_id] if found.get(i) == "not started"]
        if len(not_started) != len(ids[milestone_id]):
            problems.append(f"{milestone_id} stubbed: verdicts {found}, expected every exercise 'not started'")
        start = time.perf_counter()
        run = python(root, "-m", "ml60", "run", milestone_id, "--quick", *SMALLEST.get(milestone_id, ()),
                     data_env=data_env)
        raised = RAISED_RE.findall(run.stdout + run.stderr)
        if run.returncode == 0 or not raised or raised[-1] not in ids[milestone_id]:
            tail = (run.stdout + run.stderr)[-1500:]
            problems.append(f"{milestone_id} stubbed: the quick run should stop on one of its own exercises "
                            f"{ids[milestone_id]}; exit {run.returncode}, raised {raised}:\n{tail}")
        log.append(f"{milestone_id} stubbed: {len(not_started)}/{len(ids[milestone_id])} not started, the run stops at "
                   f"{raised[-1] if raised else '?'} ({time.perf_counter() - start:.0f}s)")

    expect_stubbed(first, grade(root, [first], data_env=data_env)[0])
    for k in range(start, stop):
        milestone = MILESTONES[k]
        after = MILESTONES[k + 1].id if k + 1 < len(MILESTONES) else None
        if ids[milestone.id]:
            exercises.restore(milestone.id, root=root)
        start = time.perf_counter()
        run = python(root, "-m", "ml60", "run", milestone.id, "--quick", *SMALLEST.get(milestone.id, ()),
                     data_env=data_env)
        if run.returncode != 0:
            problems.append(f"{milestone.id} restored, later milestones stubbed: its quick run failed "
                            f"(exit {run.returncode}):\n{(run.stdout + run.stderr)[-2000:]}")
        # One process grades both milestones and checks the run it just wrote.
        found, run_problems = grade(root, [m for m in (milestone.id, after) if m],
                                    check_run_of=milestone.id if run.returncode == 0 else None, data_env=data_env)
        problems += [f"{milestone.id}: {p}" for p in run_problems]
        unsolved = {i: found.get(i, "no verdict") for i in ids[milestone.id] if found.get(i) != "solved"}
        if unsolved:
            problems.append(f"{milestone.id} restored, later milestones stubbed: exercises not solved: {unsolved}")
        log.append(f"{milestone.id} restored: run exit {run.returncode} ({time.perf_counter() - start:.0f}s), "
                   f"{len(ids[milestone.id]) - len(unsolved)}/{len(ids[milestone.id])} solved")
        if after:
            expect_stubbed(after, found)
    print("\n".join(log))
    assert not problems, "\n\n".join(problems)
    if stop < len(order):
        return                    # later milestones are still stubbed: the last stretch proves the restore
    # Every block is the reference again: the files are byte for byte the originals.
    for ex in exercises.all_exercises(root):
        assert (root / ex.path).read_text() == (exercises.ROOT / ex.path).read_text(), f"{ex.path} differs after restore"
