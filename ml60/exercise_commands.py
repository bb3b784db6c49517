"""The exercise commands behind ``make exercise / check / solution / diff / exercises``.

    python -m ml60 exercises [SEL]          list them: id, title, where, state
    python -m ml60 exercise SEL [--force]   reference -> stub (your own code stays unless --force)
    python -m ml60 check SEL                grade the code in the tree, one line per exercise
    python -m ml60 solution SEL [--force]   back to the reference; your version is backed up first
    python -m ml60 diff SEL                 your blocks against the reference
    python -m ml60 check-json [MILESTONE..] every verdict as one JSON line (for tools and tests)
    python -m ml60 mutate [SEL]             the checks against every stub and shipped wrong answer

``SEL`` is a milestone id (``p1-numpy``), one exercise (``p1-numpy.3``) or ``all``.
"""

from __future__ import annotations

import sys

from ml60.exercises import ExerciseError, diff, edited, make_stubs, restore, select


def cmd_list(args: list[str]) -> int:
    chosen = select(args[0] if args else "all")
    width = max(len(ex.title) for ex in chosen)
    for ex in chosen:
        print(f"{ex.id:<13} {ex.title:<{width}}  {ex.state:<9}  {ex.location}")
    print(f"{len(chosen)} exercises. Stub one milestone with `make exercise M=<id>`, grade it with `make check M=<id>`.")
    return 0


def cmd_exercise(args: list[str]) -> int:
    selector, force = _selector(args), "--force" in args
    outcome = make_stubs(selector, force=force)
    _print_lines(outcome.lines)
    if outcome.backup:
        print(f"Your previous version is saved in {outcome.backup}/")
    print(f"Next: read the hint in each stub and the guide it names, write the code, then `make check M={selector}`.")
    return 0


def cmd_check(args: list[str]) -> int:
    from ml60.grading import report

    selector = _selector(args)
    print(f"Checking {selector} against the code in the tree:")
    return report(selector)


def cmd_solution(args: list[str]) -> int:
    selector, force = _selector(args), "--force" in args
    mine = edited(selector)
    if mine and not force:
        names = ", ".join(ex.id for ex in mine)
        hold = "holds" if len(mine) == 1 else "hold"
        if not sys.stdin.isatty():
            print(f"{names} {hold} your own code. `make solution M={selector} FORCE=1` replaces it with the reference "
                  "(after a backup under .ml60/backup/); `make diff M=" + selector + "` shows the difference first.",
                  file=sys.stderr)
            return 1
        answer = input(f"{names} {hold} your own code. Replace it with the reference (a backup is kept)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    outcome = restore(selector)
    _print_lines(outcome.lines)
    if outcome.backup:
        print(f"Your version is saved in {outcome.backup}/")
    return 0


def cmd_diff(args: list[str]) -> int:
    text = diff(_selector(args))
    print(text if text else "No difference: every block is the reference answer.")
    return 0


def cmd_check_json(args: list[str]) -> int:
    from ml60.grading import verdicts_json

    print(verdicts_json(args))
    return 0


def cmd_mutate(args: list[str]) -> int:
    from ml60.grading import mutation_report

    selector = args[0] if args else "all"
    print(f"Mutants of {selector}: each exercise's stub and its shipped wrong answers must fail its checks.")
    return mutation_report(selector)


COMMANDS = {"exercises": cmd_list, "exercise": cmd_exercise, "check": cmd_check, "solution": cmd_solution,
            "diff": cmd_diff, "check-json": cmd_check_json, "mutate": cmd_mutate}


def dispatch(command, args: list[str]) -> int:
    try:
        return command(args)
    except ExerciseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _selector(args: list[str]) -> str:
    names = [a for a in args if not a.startswith("--")]
    if not names:
        raise ExerciseError("name a milestone or an exercise: M=p1-numpy (make) or `python -m ml60 check p1-numpy`")
    return names[0]


def _print_lines(lines: list[tuple[str, str]]) -> None:
    for exercise_id, text in lines:
        print(f"  {exercise_id:<13} {text}")
