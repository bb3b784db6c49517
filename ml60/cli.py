"""The front door: ``python -m ml60 <command>`` (what the Makefile calls).

Commands:
    help                 every milestone with its days and what it teaches
    ids                  milestone ids, one per line (the Makefile reads this)
    run ID [ARGS...]     run one milestone (ARGS go to its script, e.g. --quick)
    phase N [ARGS...]    run every built milestone of phase N in order
    quickstart           every built milestone in quick mode, then a summary table
    progress             per milestone: built? run? key figure? check passing? exercises solved?
    compare ID           every run of one milestone side by side: a table and runs/ID/compare.png
    days                 the sixty days, read from the phase guides (the README's table)
    exercises [SEL]      list the exercises (SEL: a milestone id, one exercise id, or all)
    exercise SEL [--force]   turn the reference answers into stubs for the learner to write
    check SEL            grade the code in the tree, one line per exercise
    solution SEL [--force]   bring the reference answers back (the learner's version is backed up)
    diff SEL             the learner's blocks against the reference

``help`` and ``ids`` use only the standard library, so they work before install.
"""

from __future__ import annotations

import json
import os
# bandit B404: milestones start as `python -m <module>`, never through a shell
import subprocess  # nosec B404
import sys
import time

from common import runs  # standard library only, like this module
from common.runs import runs_root
from common.text_table import text_table
from ml60.milestones import MILESTONES, PHASE_TITLES, Milestone, by_id, in_phase


def cmd_help() -> int:
    print("ML60: sixty days of machine learning, one milestone at a time.\n")
    print("Start on day 1:  make exercise M=p1-numpy   (edit the stubs)   make check M=p1-numpy\n")
    print("Exercises (M= a milestone id, or one exercise such as M=p1-numpy.3):")
    for target, text in (("make exercise M=..", "turn the reference answers into stubs for you to write"),
                         ("make check M=..", "grade your code: solved, not started, or wrong and why"),
                         ("make solution M=..", "bring the reference back (your version is backed up first)"),
                         ("make diff M=..", "your blocks against the reference"),
                         ("make exercises", "every exercise, where it is and its state"),
                         ("make mutate", "prove the checks: every stub and shipped wrong answer must fail them")):
        print(f"  {target:<20} {text}")
    print("\nSet-up and checks:")
    for target, text in (("make quickstart", "install, then run every built milestone in quick mode"),
                         ("make test", "install, then run the pytest checks"),
                         ("make test-fast", "the unit tests and exercise checks only, no training runs"),
                         ("make progress", "which milestones have a run, and whether its check passes"),
                         ("make phase1|2|3", "run every built milestone of a phase"),
                         ("make bench", "speed benchmarks (see benchmarks/): bench-p1, bench-p2"),
                         ("make p3-load", "the p3 service under load, micro-batching on and off")):
        print(f"  {target:<20} {text}")
    for phase, title in PHASE_TITLES.items():
        print(f"\n{title}")
        for m in in_phase(phase):
            state = "" if m.built else "   (not built yet)"
            print(f"  make {m.id:<12} days {m.days:<6} {m.summary}{state}")
    print("\nOptions for any milestone target: QUICK=1 (seconds, tiny data), DEVICE=auto|cpu|cuda|mps,")
    print("DATA_DIR=path (where datasets live; default ./data), ARGS='--flag value' (passed to the script),")
    print("NPROC=N (p2-cnn: N data-parallel processes under torchrun).")
    print("Check one milestone with: .venv/bin/python -m pytest -m <id>")
    return 0


def cmd_ids() -> int:
    print("\n".join(m.id for m in MILESTONES))
    return 0


def run_milestone(m: Milestone, extra: list[str]) -> int:
    if not m.built:
        print(f"{m.id} (days {m.days}) is not built yet: its module {m.module} does not exist in this checkout.",
              file=sys.stderr)
        return 2
    print(f"\n=== {m.id} (days {m.days}): {m.summary} ===", flush=True)
    nproc = int(os.environ.get("ML60_NPROC", "1") or 1)
    if nproc > 1:   # make p2-cnn NPROC=2: PyTorch's launcher starts one process per rank
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        print(f"$ torchrun --standalone --nproc_per_node={nproc} -m {m.module} {' '.join(extra)}", flush=True)
        # bandit B603: torchrun or this Python, and a module named in MILESTONES; no shell
        return subprocess.call([*launcher, "-m", m.module, *extra])  # nosec B603
    return subprocess.call([sys.executable, "-m", m.module, *extra])  # nosec B603


def milestone_named(name: str) -> Milestone | None:
    """The milestone ``name`` ids, or None after saying on stderr that there is none (the caller exits 2)."""
    try:
        return by_id(name)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return None


def cmd_run(args: list[str]) -> int:
    if not args:
        print("usage: python -m ml60 run ID [ARGS...]", file=sys.stderr)
        return 2
    m = milestone_named(args[0])
    return run_milestone(m, args[1:]) if m else 2


def cmd_phase(args: list[str]) -> int:
    if not args or args[0] not in ("1", "2", "3"):
        print("usage: python -m ml60 phase 1|2|3 [ARGS...]", file=sys.stderr)
        return 2
    built = [m for m in in_phase(int(args[0])) if m.built]
    if not built:
        print(f"phase {args[0]} has no built milestone yet", file=sys.stderr)
        return 2
    for m in built:
        code = run_milestone(m, [*args[1:], *m.phase_args])
        if code:
            return code
    return 0


def read_metrics(m: Milestone, *, quick: bool | None = None) -> dict | None:
    """The metrics of the milestone's run: its quick or full run, or (``quick=None``) the full one if any."""
    path = runs.upstream_run(m.id) if quick is None else runs.run_path(m.id, quick=quick)
    if not (path / "metrics.json").is_file():
        return None
    try:
        return runs.read_metrics(path)
    except (OSError, json.JSONDecodeError):
        return {"_unreadable": str(path / "metrics.json")}


def key_figure_text(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    figure = metrics.get("key_figure") or {}
    return str(figure.get("display") or figure.get("value") or "-")


def cmd_quickstart() -> int:
    built = [m for m in MILESTONES if m.built]
    print(f"ML60 quickstart: {len(built)} of {len(MILESTONES)} milestones are built; running each in quick mode.")
    print("Quick mode uses small data. Where a real dataset is missing it uses an offline stand-in, and says so.")
    rows, failed, used_stand_in = [], 0, False
    start_all = time.perf_counter()
    for m in built:
        start = time.perf_counter()
        code = run_milestone(m, ["--quick"])
        seconds = time.perf_counter() - start
        metrics = read_metrics(m, quick=True) if code == 0 else None
        if code:
            failed += 1
        data = _data_kind(metrics)
        used_stand_in = used_stand_in or data == "offline stand-in"
        rows.append((m.id, "FAILED (exit %d)" % code if code else key_figure_text(metrics), data,
                     f"{seconds:.0f}s", str(runs.run_path(m.id, quick=True)) + "/"))
    print("\n" + text_table(("milestone", "key figure", "data", "time", "output"), rows))
    if used_stand_in:
        print("\nSome milestones ran on an offline stand-in because the real dataset was not found. Put it in "
              "./data (or run with DATA_DIR=/path) for real figures (the README's Data section says which files go where).")
    not_built = [m.id for m in MILESTONES if not m.built]
    if not_built:
        print(f"\nNot built yet: {', '.join(not_built)}")
    print(f"\nTotal {time.perf_counter() - start_all:.0f}s. Next: `make help` for the full runs, "
          "`make progress` to see where you are, `make test` for the checks.")
    return 1 if failed else 0


def _data_kind(metrics: dict | None) -> str:
    if not metrics:
        return ""
    if "data" not in metrics:
        return "no dataset"
    return "real data" if metrics["data"].get("real_data") else "offline stand-in"


def cmd_progress() -> int:
    from ml60.compare import finished_run_folders
    from ml60.grading import solved_counts

    print("Grading the exercises in the tree (make check M=<id> says which and why)...", flush=True)
    solved = solved_counts()
    rows, notes, full_misses = [], [], {}
    for m in MILESTONES:
        done, total = solved.get(m.id, (0, 0))
        exercises = f"{done}/{total}" if total else "-"
        if not m.built:
            rows.append((m.id, m.days, exercises, "not built yet", "-", "-"))
            continue
        metrics = read_metrics(m)
        if metrics is None:
            rows.append((m.id, m.days, exercises, "no run yet", "-", f"make {m.id}"))
            continue
        if "_unreadable" in metrics:
            rows.append((m.id, m.days, exercises, "run folder damaged", "-", f"unreadable {metrics['_unreadable']}"))
            continue
        kind = "quick run" if metrics.get("quick") else "full run"
        when = metrics.get("finished_utc", "?")
        others = len(finished_run_folders(m.id)) - 1
        more = f" (+{others}: make compare M={m.id})" if others > 0 else ""
        verdict = _check(m, metrics)
        if metrics.get("quick") and verdict == "PASS":
            verdict = "PASS (quick targets)"
            full_misses[m.id] = _full_run_misses(m, metrics)
        rows.append((m.id, m.days, exercises, f"{kind} {when}{more}", key_figure_text(metrics), verdict))
        notes += [(m.id, text) for text in _speed(m, metrics)]
    print(text_table(("milestone", "days", "exercises solved", "run", "key figure", "check"), rows))
    if full_misses:
        print("\nA quick run is held to the quick targets: its own exercises must work and its figures must be "
              "possible on small data.\nOnly a full run (make <id>, on the real data) is held to the full targets; "
              "against those, these quick runs would stand as follows:")
        for milestone_id, misses in full_misses.items():
            print(f"  {milestone_id}: " + ("within the full targets too" if not misses else
                                          "not held to, and missed: " + "; ".join(misses)))
    if notes:
        print("\nMachine speed (information, not a check: the reference machine is a 2-core AMD EPYC; yours differs):")
        for milestone_id, text in notes:
            print(f"  {milestone_id}: {text}")
    return 0


def cmd_compare(args: list[str]) -> int:
    if len(args) != 1:
        print("usage: python -m ml60 compare ID   (make compare M=p1-numpy)", file=sys.stderr)
        return 2
    m = milestone_named(args[0])
    if m is None:
        return 2
    from ml60.compare import compare

    return compare(m.id)


def _speed(m: Milestone, metrics: dict) -> list[str]:
    """The run's machine-speed figures beside the reference machine's (``speed(metrics)``), as text."""
    import importlib

    from common.script import speed_text

    speed = getattr(importlib.import_module(m.module), "speed", None)
    return [speed_text(figure) for figure in speed(metrics)] if speed else []


def _check(m: Milestone, metrics: dict) -> str:
    import importlib

    module = importlib.import_module(m.module)
    check = getattr(module, "check", None)
    if check is None:
        return "no check defined"
    problems = check(metrics)
    return "PASS" if not problems else "FAIL: " + "; ".join(problems)


def _full_run_misses(m: Milestone, metrics: dict) -> list[str]:
    """What a quick run would miss if it were held to the full run's targets.

    Every milestone's ``check`` relaxes some targets for a quick run (fewer epochs, fewer seeds, small data);
    asking the same ``check`` about the same figures as if they came from a full run on real data, and
    keeping only the problems that appear then, names exactly the targets a quick run is not held to and
    misses. Nothing is listed by hand, so the list cannot drift from the checks.
    """
    import importlib

    check = getattr(importlib.import_module(m.module), "check", None)
    if check is None:
        return []
    as_full = {**metrics, "quick": False, "data": {**metrics.get("data", {}), "real_data": True}}
    quick_problems = set(check(metrics))
    return [problem for problem in check(as_full) if problem not in quick_problems]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    commands = {"help": lambda: cmd_help(), "ids": lambda: cmd_ids(), "run": lambda: cmd_run(rest),
                "phase": lambda: cmd_phase(rest), "quickstart": lambda: cmd_quickstart(),
                "progress": lambda: cmd_progress(), "compare": lambda: cmd_compare(rest),
                "days": lambda: __import__("ml60.days", fromlist=["main"]).main(),
                "install-check": lambda: __import__("ml60.install_check", fromlist=["main"]).main()}
    from ml60 import exercise_commands

    commands.update({name: (lambda f=f: exercise_commands.dispatch(f, rest))
                     for name, f in exercise_commands.COMMANDS.items()})
    if command not in commands:
        print(f"unknown command {command!r}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    return commands[command]()


if __name__ == "__main__":
    sys.exit(main())
