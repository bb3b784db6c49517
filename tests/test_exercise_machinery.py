"""The exercise machinery on a small project of its own: parse, stub, restore, diff, backups, git fallback.

The real blocks are proven elsewhere (tests/test_exercises.py, tests/test_exercise_stubs.py); here a
two-function module in a scratch folder shows each rule of ml60/exercises.py, including the error messages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ml60 import exercises
from ml60.exercises import ExerciseError

pytestmark = pytest.mark.foundation

MODULE = textwrap.dedent('''\
    """A module with two exercises."""


    def double(x):
        """Twice x."""
        # EXERCISE p1-numpy.1: doubling
        # hint: add x to itself
        return x + x
        # END EXERCISE


    class Box:
        def size(self):
            """How big."""
            # EXERCISE p1-numpy.2: the size of a box
            # hint: it is 3
            value = 3
            return value
            # END EXERCISE
    ''')


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "phase1_foundation").mkdir()
    (tmp_path / "phase1_foundation" / "lesson.py").write_text(MODULE)
    return tmp_path


def blocks(root):
    return {ex.id: ex for ex in exercises.all_exercises(root)}


def test_parse_finds_id_title_hint_function_and_guide(project):
    found = blocks(project)
    one, two = found["p1-numpy.1"], found["p1-numpy.2"]
    assert (one.title, one.hint, one.function, one.body.strip()) == ("doubling", "add x to itself", "double", "return x + x")
    assert two.function == "Box.size" and two.body.count("\n") == 1
    assert one.guide == "phase1_foundation/README.md#p1-numpy.1"
    assert one.module == "phase1_foundation.lesson" and one.location.startswith("phase1_foundation/lesson.py:8")


def test_stub_then_restore_gives_back_the_same_bytes(project):
    original = (project / "phase1_foundation" / "lesson.py").read_text()
    outcome = exercises.make_stubs("p1-numpy", root=project)
    assert [text.split(":")[0] for _, text in outcome.lines] == ["stubbed", "stubbed"] and outcome.backup is None
    stubbed = (project / "phase1_foundation" / "lesson.py").read_text()
    assert "return x + x" not in stubbed and "# hint: add x to itself" in stubbed and "# END EXERCISE" in stubbed
    namespace = {}
    exec(compile(stubbed, "lesson.py", "exec"), namespace)
    with pytest.raises(NotImplementedError, match=r"^p1-numpy\.1 \(doubling\) is yours to write\. Hint: add x to itself\."):
        namespace["double"](2)
    assert all(ex.state == "stub" for ex in blocks(project).values())
    exercises.restore("p1-numpy", root=project)
    assert (project / "phase1_foundation" / "lesson.py").read_text() == original


def test_the_places_printed_after_stubbing_are_the_stubs_own_lines(tmp_path):
    """`make exercise M=p1-numpy` prints where each stub now is: a stub is shorter than its answer, so every
    block below the first in a file moves up, and the line printed must be the stub's `raise`."""
    shutil.copytree(exercises.ROOT / "phase1_foundation", tmp_path / "phase1_foundation",
                    ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    reference = blocks(tmp_path)
    outcome = exercises.make_stubs("p1-numpy", root=tmp_path)
    printed = dict(outcome.lines)
    assert len(printed) == 5, printed
    moved = 0
    for exercise_id, text in printed.items():
        path, line = text.removeprefix("stubbed: ").split(" ")[0].rsplit(":", 1)
        shown = (tmp_path / path).read_text().splitlines()[int(line) - 1]
        assert re.search(rf"raise NotImplementedError\(['\"]{re.escape(exercise_id)} ", shown), (exercise_id, text, shown)
        moved += reference[exercise_id].body_start + 1 != int(line)
    assert moved >= 2, "no block moved: the lesson files changed, so this test no longer shows the rule"


def test_the_learners_code_is_kept_and_backed_up(project):
    path = project / "phase1_foundation" / "lesson.py"
    exercises.make_stubs("p1-numpy.1", root=project)
    learner = path.read_text().replace(blocks(project)["p1-numpy.1"].body, "    return 2 * x")
    path.write_text(learner)
    assert blocks(project)["p1-numpy.1"].state == "edited"
    # make exercise again: the learner's version stays unless forced
    outcome = exercises.make_stubs("p1-numpy.1", root=project)
    assert "kept your version" in outcome.lines[0][1] and path.read_text() == learner
    assert "-    return x + x\n+    return 2 * x" in exercises.diff("p1-numpy.1", root=project)
    assert [ex.id for ex in exercises.edited("p1-numpy", root=project)] == ["p1-numpy.1"]
    outcome = exercises.restore("p1-numpy", root=project)
    assert outcome.backup is not None
    assert (outcome.backup / "phase1_foundation" / "lesson.py").read_text() == learner
    assert "return x + x" in path.read_text() and exercises.diff("p1-numpy", root=project) == ""


def test_forced_exercise_backs_up_first(project):
    path = project / "phase1_foundation" / "lesson.py"
    exercises.make_stubs("p1-numpy.2", root=project)
    exercises.restore("p1-numpy.2", root=project)
    path.write_text(path.read_text().replace("value = 3", "value = 1 + 2"))
    outcome = exercises.make_stubs("p1-numpy.2", force=True, root=project)
    assert outcome.backup is not None and "value = 1 + 2" in (outcome.backup / "phase1_foundation/lesson.py").read_text()
    assert blocks(project)["p1-numpy.2"].state == "stub"


def test_reference_comes_from_git_when_nothing_was_recorded(project):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "reference"], cwd=project, check=True)
    exercises._git_head_blocks.cache_clear()
    exercises.make_stubs("p1-numpy", root=project)
    shutil.rmtree(project / ".ml60")      # the recorded references are lost
    exercises.restore("p1-numpy", root=project)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout == ""


@pytest.mark.parametrize("text, message", [
    ("def f():\n    # EXERCISE p1-numpy.1: x\n    return 1\n", "has no END EXERCISE line"),
    ("def f():\n    return 1\n    # END EXERCISE\n", "END EXERCISE without an EXERCISE line"),
    ("def f():\n    # EXERCISE p1-numpy.1: x\n    # EXERCISE p1-numpy.2: y\n    # END EXERCISE\n", "before the next block"),
    ("# EXERCISE p1-numpy.1: x\nA = 1\n# END EXERCISE\n", "is not inside a function"),
    ("def f():\n    # EXERCISE p9-magic.1: x\n    return 1\n    # END EXERCISE\n", "names no milestone"),
])
def test_malformed_blocks_are_named(tmp_path, text, message):
    (tmp_path / "phase1_foundation").mkdir()
    (tmp_path / "phase1_foundation" / "bad.py").write_text(text)
    with pytest.raises(ExerciseError, match=message):
        exercises.all_exercises(tmp_path)


def test_duplicate_ids_and_unknown_selectors(project):
    (project / "phase1_foundation" / "again.py").write_text(MODULE)
    with pytest.raises(ExerciseError, match="appears twice"):
        exercises.all_exercises(project)
    (project / "phase1_foundation" / "again.py").unlink()
    with pytest.raises(ExerciseError, match="no exercise 'p1-nump'"):
        exercises.select("p1-nump", project)
    with pytest.raises(ExerciseError, match="p2-cnn has no exercise blocks yet"):
        exercises.select("p2-cnn", project)


def test_solution_asks_before_replacing_the_learners_code(project):
    """The real command line in a copy: without a terminal or FORCE it refuses, and says how to go on."""
    shutil.copytree(exercises.ROOT / "ml60", project / "ml60", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(exercises.ROOT / "common", project / "common", ignore=shutil.ignore_patterns("__pycache__"))

    def ml60(*args):
        return subprocess.run([sys.executable, "-m", "ml60", *args], cwd=project, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)

    assert ml60("exercise", "p1-numpy").returncode == 0
    path = project / "phase1_foundation" / "lesson.py"
    path.write_text(path.read_text().replace(blocks(project)["p1-numpy.1"].body, "    return 2 * x"))
    refused = ml60("solution", "p1-numpy")
    assert refused.returncode == 1 and "p1-numpy.1 holds your own code" in refused.stderr and "FORCE=1" in refused.stderr
    assert "return 2 * x" in path.read_text()
    listed = ml60("exercises")
    assert "p1-numpy.1" in listed.stdout and "edited" in listed.stdout and "stub" in listed.stdout
    forced = ml60("solution", "p1-numpy", "--force")
    assert forced.returncode == 0 and "Your version is saved in" in forced.stdout
    assert path.read_text() == MODULE
    assert ml60("exercise").returncode == 2 and "name a milestone" in ml60("exercise").stderr


@pytest.mark.slow
def test_make_check_grades_the_tree():
    """`make check` on the reference tree: every p1-numpy exercise solved, exit 0."""
    out = subprocess.run([sys.executable, "-m", "ml60", "check", "p1-numpy"], cwd=exercises.ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5/5 solved." in out.stdout and out.stdout.count(" solved") == 6
