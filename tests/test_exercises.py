"""The proof that the exercise checks can fail: every wrong answer is caught, with its diagnosis.

(a) the reference passes its checks: ``tests/exercises/`` runs as part of
    this suite on the reference tree;
(b) the stub fails them, and (d) stubbing a milestone leaves every earlier
    milestone green: ``tests/test_exercise_stubs.py`` on a scratch copy;
(c) each shipped wrong answer, swapped in for the exercise's function, makes
    a check fail with the diagnosis written for that mistake: here.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from ml60 import grading
from ml60.exercises import ROOT, all_exercises
from ml60.milestones import MILESTONES

EXERCISES = {ex.id: ex for ex in all_exercises()}
CHECK_MODULES = {m.id: importlib.import_module(f"tests.exercises.{grading.check_file(m.id).stem}")
                 for m in MILESTONES if (ROOT / grading.check_file(m.id)).is_file()}


def checks_of(exercise_id: str) -> list:
    """The check functions of one exercise, from its milestone's check file."""
    module = CHECK_MODULES.get(exercise_id.rsplit(".", 1)[0])
    found = []
    for _, function in inspect.getmembers(module, inspect.isfunction) if module else []:
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "exercise"]
        if any(m.args[0] == exercise_id for m in marks):
            found.append(function)
    return found


def run_check(check, tmp_path: Path):
    """Call a check as pytest would; only ``tmp_path`` may be asked for."""
    params = inspect.signature(check).parameters
    unknown = set(params) - {"tmp_path"}
    assert not unknown, f"{check.__name__} asks for fixtures {unknown}; exercise checks may only take tmp_path"
    return check(**({"tmp_path": tmp_path} if "tmp_path" in params else {}))


def wrong_answers():
    seen = {}
    for answer in grading.WRONG_ANSWERS:
        seen.setdefault((answer.exercise_id, answer.function.__qualname__), answer)
    return list(seen.values())


WRONG = wrong_answers()


def test_exercise_blocks_parse_and_have_checks_and_wrong_answers():
    assert EXERCISES, "no exercise blocks found"
    without_check = [i for i in EXERCISES if not checks_of(i)]
    assert not without_check, f"exercises with no check: {without_check}"
    with_wrong = {a.exercise_id for a in WRONG}
    assert not set(EXERCISES) - with_wrong, f"exercises with no shipped wrong answer: {sorted(set(EXERCISES) - with_wrong)}"
    assert not with_wrong - set(EXERCISES), f"wrong answers for unknown exercises: {sorted(with_wrong - set(EXERCISES))}"
    for ex in EXERCISES.values():
        grading.resolve_target(ex)   # the function around each block is reachable by import


@pytest.mark.parametrize("answer", WRONG, ids=lambda a: f"{a.exercise_id}:{a.function.__name__}")
def test_wrong_answer_fails_with_its_diagnosis(answer, monkeypatch, tmp_path):
    owner, name = grading.resolve_target(EXERCISES[answer.exercise_id])
    monkeypatch.setattr(owner, name, answer.function)
    messages = []
    for check in checks_of(answer.exercise_id):
        try:
            run_check(check, tmp_path)
        except AssertionError as exc:
            messages.append(str(exc))
    assert messages, f"every check of {answer.exercise_id} passes the wrong answer {answer.function.__name__!r} " \
                     f"({answer.why})"
    assert any(answer.diagnosis in m for m in messages), (
        f"{answer.function.__name__} ({answer.why}) fails, but not with the diagnosis meant for it "
        f"({answer.diagnosis!r}); the checks said: {messages}")


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
def test_stub_is_reported_as_not_started(exercise_id, monkeypatch, tmp_path):
    """In-process twin of the scratch-tree proof: the stub's exception reads as 'not started'."""
    ex = EXERCISES[exercise_id]
    owner, name = grading.resolve_target(ex)
    message = ex.stub().strip()[len("raise NotImplementedError("):-1]

    def stub(*args, **kwargs):
        raise NotImplementedError(eval(message))   # the stub's own message, as the file would raise it

    monkeypatch.setattr(owner, name, stub)
    verdicts = []
    for check in checks_of(exercise_id):
        try:
            run_check(check, tmp_path)
            verdicts.append("passed")
        except Exception as exc:   # noqa: BLE001 - classify whatever the check raised
            verdicts.append(grading.classify(exercise_id, _ExcInfo(exc)).status)
    assert verdicts and "passed" not in verdicts, f"a check of {exercise_id} passes with the stub in place"
    assert "not started" in verdicts, f"the stub of {exercise_id} is not reported as not started: {verdicts}"


class _ExcInfo:
    """Just enough of pytest's ExceptionInfo for grading.classify."""

    def __init__(self, exc: BaseException):
        self.value, self.tb = exc, exc.__traceback__


def test_course_size():
    """At least 40 exercises, at least 3 in every milestone."""
    per_milestone = {m.id: sum(ex.milestone == m.id for ex in EXERCISES.values()) for m in MILESTONES}
    short = {m: n for m, n in per_milestone.items() if n < 3}
    assert not short and len(EXERCISES) >= 40, f"{len(EXERCISES)} exercises; milestones with fewer than 3: {short}"
