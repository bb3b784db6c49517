"""The proof that the exercise checks can fail: every wrong answer is caught, with its diagnosis.

(a) the reference passes its checks: ``tests/exercises/`` runs as part of
    this suite on the reference tree;
(b) the stub fails them, and (d) stubbing a milestone leaves every earlier
    milestone green: ``tests/test_exercise_stubs.py`` on a scratch copy;
(c) each shipped wrong answer, swapped in for the exercise's function, makes
    a check fail with the diagnosis written for that mistake: here.
"""

from __future__ import annotations

import pytest

from ml60 import grading
from ml60.exercises import ROOT, all_exercises
from ml60.milestones import MILESTONES

EXERCISES = {ex.id: ex for ex in all_exercises()}
CHECK_MODULES = grading.load_check_modules()
WRONG = grading.unique_wrong_answers()


def test_exercise_blocks_parse_and_have_checks_and_wrong_answers():
    assert EXERCISES, "no exercise blocks found"
    without_check = [i for i in EXERCISES if not grading.checks_of(i, CHECK_MODULES)]
    assert not without_check, f"exercises with no check: {without_check}"
    with_wrong = {a.exercise_id for a in WRONG}
    assert not set(EXERCISES) - with_wrong, f"exercises with no shipped wrong answer: {sorted(set(EXERCISES) - with_wrong)}"
    assert not with_wrong - set(EXERCISES), f"wrong answers for unknown exercises: {sorted(with_wrong - set(EXERCISES))}"
    for ex in EXERCISES.values():
        grading.resolve_target(ex)   # the function around each block is reachable by import


@pytest.mark.parametrize("answer", WRONG, ids=lambda a: f"{a.exercise_id}:{a.function.__name__}")
def test_wrong_answer_fails_with_its_diagnosis(answer, tmp_path):
    errors = grading.failures_with(EXERCISES[answer.exercise_id], answer.function, CHECK_MODULES, tmp_path)
    messages = [str(e) for e in errors if isinstance(e, AssertionError)]
    assert messages, f"no check of {answer.exercise_id} fails the wrong answer {answer.function.__name__!r} " \
                     f"({answer.why}) with a diagnosis; errors: {errors}"
    assert any(answer.diagnosis in m for m in messages), (
        f"{answer.function.__name__} ({answer.why}) fails, but not with the diagnosis meant for it "
        f"({answer.diagnosis!r}); the checks said: {messages}")


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_reference_passes_and_stub_reads_not_started(exercise_id, tmp_path):
    """(a) the reference passes every check; the stub (as the file would raise it) fails every check as 'not started'."""
    ex = EXERCISES[exercise_id]
    assert grading.failures_with(ex, None, CHECK_MODULES, tmp_path) == []
    errors = grading.failures_with(ex, grading.stub_function(ex), CHECK_MODULES, tmp_path)
    checks = grading.checks_of(exercise_id, CHECK_MODULES)
    assert len(errors) == len(checks), f"{len(checks) - len(errors)} check(s) of {exercise_id} pass with the stub"
    verdicts = [grading.classify(exercise_id, e).status for e in errors]
    assert set(verdicts) == {"not started"}, f"the stub of {exercise_id} reads as {verdicts}, not 'not started'"


def test_every_exercise_has_its_section_in_the_guide():
    """The stub sends the learner to ``<phase>/README.md#<id>``: that anchor exists, with a question and its answer."""
    missing = []
    for ex in EXERCISES.values():
        path, _, anchor = ex.guide.partition("#")
        text = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else ""
        start = text.find(f'<a id="{anchor}"></a>')
        section = text[start:text.find("<a id=", start + 1)] if start >= 0 else ""
        if not section or "<details>" not in section or "Before you run it" not in section:
            missing.append(ex.id)
    assert not missing, f"exercises without a guide section (anchor, question, folded answer): {missing}"


def test_course_size():
    """At least 40 exercises, at least 3 in every milestone."""
    per_milestone = {m.id: sum(ex.milestone == m.id for ex in EXERCISES.values()) for m in MILESTONES}
    short = {m: n for m, n in per_milestone.items() if n < 3}
    assert not short and len(EXERCISES) >= 40, f"{len(EXERCISES)} exercises; milestones with fewer than 3: {short}"
