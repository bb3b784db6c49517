"""Grading exercises: the checks, the wrong answers they must catch, and ``make check``'s report.

A check file (``tests/exercises/test_<milestone>.py``) holds, for each exercise:

* one or more **checks**: plain pytest tests marked with :func:`exercise`.
  A check exercises the function's *behaviour* through its module
  (``numpy_net.backward(...)``), never compares source text, and never asks
  the tree's own code for the expected answer (that code may be the stub).
  When it fails it says what is wrong and what the likely mistake is::

      expect(err_w2 < 1e-6 and err_w1 > 1e-3,
             f"W1's gradient is off by {err_w1:.2f} while W2's is right: is the ReLU mask applied?")

* **wrong answers**, marked with :func:`wrong_answer`: small drop-in
  replacements of the exercise's function that make the common mistake.
  ``tests/test_exercises.py`` swaps each one in and demands that the checks
  fail with the diagnosis written for it.  That is how a check is proven able
  to fail.

``python -m ml60 check p1-numpy`` (``make check M=p1-numpy``) runs one
milestone's check file under pytest and prints one line per exercise:
solved, not started, waiting on another exercise, or wrong with its diagnosis.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
# bandit B404: grading runs in a child Python with a fixed argv, never through a shell
import subprocess  # nosec B404
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from ml60.exercises import ROOT, Exercise, all_exercises, select, stub_message

CHECKS_DIR = Path("tests") / "exercises"
EXERCISE_ID_RE = re.compile(r"\b(p\d-[a-z]+\.\d+)\b")


def check_file(milestone: str) -> Path:
    return CHECKS_DIR / f"test_{milestone.replace('-', '_')}.py"


# --------------------------------------------------------------------------- writing checks


def exercise(exercise_id: str):
    """Mark a pytest test as a check of one exercise (and of its milestone: ``pytest -m p1-numpy``)."""
    milestone = exercise_id.rsplit(".", 1)[0]

    def mark(test):
        test = pytest.mark.exercise(exercise_id)(test)
        return getattr(pytest.mark, milestone)(test)

    return mark


def expect(condition, diagnosis: str) -> None:
    """Fail the check with ``diagnosis`` (what is wrong, and the likely mistake) unless ``condition``."""
    if not condition:
        raise AssertionError(diagnosis)


@dataclass(frozen=True)
class WrongAnswer:
    exercise_id: str
    function: Callable
    diagnosis: str          # a piece of the message the checks must fail with
    why: str                # the mistake, in a few words (the function's docstring)


WRONG_ANSWERS: list[WrongAnswer] = []


def wrong_answer(exercise_id: str, *, diagnosis: str):
    """Register a common mistake for ``exercise_id``; its checks must fail with ``diagnosis`` in the message.

    The decorated function replaces the exercise's function (same signature;
    ``self`` first for a method) while the proof runs.
    """

    def register(function):
        why = (function.__doc__ or function.__name__).strip().splitlines()[0]
        WRONG_ANSWERS.append(WrongAnswer(exercise_id, function, diagnosis, why))
        return function

    return register


def resolve_target(ex: Exercise):
    """The object and attribute name that hold the exercise's function: ``(module, "f")`` or ``(Class, "m")``."""
    import importlib

    owner = importlib.import_module(ex.module)
    *classes, name = ex.function.split(".")
    for cls in classes:
        owner = getattr(owner, cls)
    if not callable(getattr(owner, name, None)):
        raise AttributeError(f"{ex.id}: {ex.module}.{ex.function} is not a function")
    return owner, name


# --------------------------------------------------------------------------- ``make check``


@dataclass
class Verdict:
    exercise_id: str
    status: str             # "solved" | "not started" | "waiting" | "wrong" | "error" | "no check"
    detail: str = ""


class ReportPlugin:
    """A pytest plugin that turns each check's outcome into a verdict for its exercise."""

    ORDER = ("no check", "solved", "waiting", "not started", "wrong", "error")  # worst last

    def __init__(self):
        self.verdicts: dict[str, Verdict] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        marker = item.get_closest_marker("exercise")
        if marker is None or (report.when != "call" and not report.failed):
            return
        verdict = classify(marker.args[0], call.excinfo.value if call.excinfo else None)
        previous = self.verdicts.get(verdict.exercise_id)
        if previous is None or self.ORDER.index(verdict.status) > self.ORDER.index(previous.status):
            self.verdicts[verdict.exercise_id] = verdict


def classify(exercise_id: str, error: BaseException | None) -> Verdict:
    """What one check's outcome (None: it passed, else what it raised) says about an exercise."""
    if error is None:
        return Verdict(exercise_id, "solved")
    if isinstance(error, NotImplementedError):
        named = EXERCISE_ID_RE.search(str(error))
        if named and named.group(1) != exercise_id:
            return Verdict(exercise_id, "waiting", f"uses {named.group(1)}, which is not written yet")
        return Verdict(exercise_id, "not started")
    if isinstance(error, AssertionError):
        return Verdict(exercise_id, "wrong", str(error).strip().splitlines()[0] if str(error).strip() else
                       "a check failed without a message")
    return Verdict(exercise_id, "error", f"{type(error).__name__}: {str(error).strip()[:200]}{_where(error)}")


def _where(error: BaseException) -> str:
    """The deepest traceback line inside the project's phase code: where the learner's code broke."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "phase" in Path(f.filename).parts[-2]]
    if not frames:
        return ""
    frame = frames[-1]
    try:
        where = Path(frame.filename).resolve().relative_to(ROOT)
    except ValueError:
        where = Path(frame.filename)
    return f" (at {where}:{frame.lineno})"


def run_checks(milestones: list[str], *, quiet: bool = True) -> dict[str, Verdict]:
    """Run the check files of ``milestones`` in this process; a verdict for every exercise they check."""
    plugin = ReportPlugin()
    files = [str(ROOT / check_file(m)) for m in milestones if (ROOT / check_file(m)).is_file()]
    if files:
        args = [*files, "-p", "no:cacheprovider", "--no-header", "-o", "addopts=--strict-markers",
                "-W", "ignore::pytest.PytestUnraisableExceptionWarning", "--rootdir", str(ROOT), "-q"]
        if quiet:
            with contextlib.redirect_stdout(io.StringIO()):
                pytest.main([*args, "--tb=no", "--no-summary"], plugins=[plugin])
        else:
            pytest.main([*args, "--tb=short"], plugins=[plugin])
    return plugin.verdicts


STATUS_TEXT = {"solved": "solved", "not started": "not started", "waiting": "waiting",
               "wrong": "WRONG", "error": "ERROR", "no check": "no check yet"}


def report(selector: str) -> int:
    """``make check M=...``: one line per exercise; exit 0 only when all of them are solved."""
    chosen = select(selector)
    milestones = list(dict.fromkeys(ex.milestone for ex in chosen))
    verdicts = run_checks(milestones)
    width = max(len(ex.title) for ex in chosen)
    solved = 0
    for ex in chosen:
        verdict = verdicts.get(ex.id, Verdict(ex.id, "no check"))
        solved += verdict.status == "solved"
        detail = verdict.detail
        if verdict.status == "not started":
            detail = f"write it in {ex.location}; the hint is in the stub"
        print(f"  {ex.id:<13} {ex.title:<{width}}  {STATUS_TEXT[verdict.status]:<11} {detail}".rstrip())
    print(f"{solved}/{len(chosen)} solved." + ("" if solved == len(chosen) else
          "  Reference answers: make solution M=<id>; yours against them: make diff M=<id>"))
    if solved == len(chosen):
        return 0
    if os.environ.get("MAKELEVEL"):
        # The exit status stays 1 for scripts; make then adds its own "*** [check] Error 1" line, which
        # reads as a crash unless the learner is told what it means first.
        print("(make's 'Error 1' line below means only that not every exercise here is solved yet; "
              "nothing crashed)")
    return 1


def solved_counts() -> dict[str, tuple[int, int]]:
    """``{milestone: (solved, total)}`` over every exercise, from one pytest run in a subprocess."""
    # bandit B603: this Python with fixed arguments; no shell
    out = subprocess.run([sys.executable, "-m", "ml60", "check-json"], cwd=ROOT, capture_output=True, text=True)  # nosec B603
    try:
        verdicts = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {}
    counts: dict[str, list[int]] = {}
    for ex in all_exercises():
        tally = counts.setdefault(ex.milestone, [0, 0])
        tally[0] += verdicts.get(ex.id) == "solved"
        tally[1] += 1
    return {m: (s, t) for m, (s, t) in counts.items()}


def verdicts_json(milestones: list[str] | None = None) -> str:
    """Every exercise's status as one JSON line (``check-json``, what ``make progress`` reads)."""
    milestones = milestones or list(dict.fromkeys(ex.milestone for ex in all_exercises()))
    return json.dumps({k: v.status for k, v in run_checks(milestones).items()})


# --------------------------------------------------------------------------- the proof (``make mutate``)


def load_check_modules() -> dict[str, object]:
    """Import every milestone's check file (registering its wrong answers); ``{milestone: module}``."""
    import importlib

    from ml60.milestones import MILESTONES

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return {m.id: importlib.import_module(f"tests.exercises.{check_file(m.id).stem}")
            for m in MILESTONES if (ROOT / check_file(m.id)).is_file()}


def checks_of(exercise_id: str, modules: dict[str, object]) -> list[Callable]:
    """The check functions of one exercise, from its milestone's check file."""
    import inspect

    module = modules.get(exercise_id.rsplit(".", 1)[0])
    found = []
    for _, function in inspect.getmembers(module, inspect.isfunction) if module else []:
        marks = [m for m in getattr(function, "pytestmark", []) if m.name == "exercise"]
        if any(m.args[0] == exercise_id for m in marks):
            found.append(function)
    return found


def run_check(check: Callable, tmp_path: Path):
    """Call a check as pytest would; ``tmp_path`` is the only fixture a check may ask for."""
    import inspect

    params = inspect.signature(check).parameters
    unknown = set(params) - {"tmp_path"}
    if unknown:
        raise TypeError(f"{check.__name__} asks for fixtures {unknown}; exercise checks may only take tmp_path")
    return check(**({"tmp_path": tmp_path} if "tmp_path" in params else {}))


def unique_wrong_answers() -> list[WrongAnswer]:
    seen: dict[tuple, WrongAnswer] = {}
    for answer in WRONG_ANSWERS:
        seen.setdefault((answer.exercise_id, answer.function.__qualname__), answer)
    return list(seen.values())


def failures_with(ex: Exercise, replacement: Callable | None, modules: dict, tmp_path: Path) -> list[BaseException]:
    """Run every check of ``ex`` with its function swapped for ``replacement`` (None: as it is); the errors raised."""
    owner, name = resolve_target(ex)
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    if replacement is not None:
        setattr(owner, name, replacement)
    errors = []
    try:
        for check in checks_of(ex.id, modules):
            try:
                run_check(check, tmp_path)
            except Exception as exc:   # noqa: BLE001 - every failure counts, whatever its type
                errors.append(exc)
    finally:
        setattr(owner, name, original)
    return errors


def stub_function(ex: Exercise) -> Callable:
    """A stand-in that raises exactly what the stub in the file would raise."""
    message = stub_message(ex)

    def stub(*args, **kwargs):
        raise NotImplementedError(message)

    return stub


def mutation_report(selector: str = "all") -> int:
    """``make mutate``: every exercise's checks against its stub and its shipped wrong answers.

    A mutant is *killed* when a check fails: the stub with "not started", a
    wrong answer with the diagnosis written for it.  The reference must pass.
    """
    import tempfile

    modules = load_check_modules()
    chosen = select(selector)
    answers = unique_wrong_answers()
    total = killed = 0
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        for ex in chosen:
            line = []
            if failures_with(ex, None, modules, tmp):
                problems.append(f"{ex.id}: the reference fails its own checks")
            mutants = [("stub", stub_function(ex), None)] + [
                (a.function.__name__, a.function, a.diagnosis) for a in answers if a.exercise_id == ex.id]
            for label, function, diagnosis in mutants:
                total += 1
                errors = failures_with(ex, function, modules, tmp)
                if diagnosis is None:
                    ok = bool(errors) and all(isinstance(e, NotImplementedError) for e in errors)
                else:
                    ok = any(isinstance(e, AssertionError) and diagnosis in str(e) for e in errors)
                killed += ok
                line.append(label + ("" if ok else " SURVIVED"))
                if not ok:
                    problems.append(f"{ex.id}: mutant {label} survived (errors: {[str(e)[:80] for e in errors]})")
            print(f"  {ex.id:<13} {len(mutants)} mutants: {', '.join(line)}")
    print(f"{killed}/{total} mutants killed ({100 * killed / max(total, 1):.0f}%) over {len(chosen)} exercises.")
    for problem in problems:
        print("  " + problem)
    return 0 if killed == total and not problems else 1
