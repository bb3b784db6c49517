"""What every milestone script shares: its command-line flags and its ``metrics.json`` header.

A milestone module looks like pytorch/examples' scripts: an argparse parser
with help text, a ``--quick`` mode that finishes in seconds (what tests and CI
run), and a ``main(argv)`` that returns the metrics it wrote.  It also
defines ``check(metrics) -> list[str]``: the problems with a run, empty when
the run meets its targets.  ``make progress`` and the tests call that same
function.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

from common.runs import check_run_name, final_folder, moved_paths, publish_run, run_path, stage_run, to_jsonable, update_metrics

TRUE_WORDS = ("1", "true", "yes", "on")


def env_quick() -> bool:
    return os.environ.get("QUICK", os.environ.get("ML60_QUICK", "0")).strip().lower() in TRUE_WORDS


def milestone_parser(milestone_id: str, description: str | None) -> argparse.ArgumentParser:
    """The flags every milestone accepts; add your own to the returned parser."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {milestone_id}", description=(description or "").strip().splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=env_quick(),
                        help="seconds-long run on little data (also QUICK=1); what the tests run")
    parser.add_argument("--device", default=None,
                        help="auto | cpu | cuda | mps (default: $DEVICE, else auto)")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the datasets (default: $DATA_DIR, else ./data)")
    parser.add_argument("--run-dir", default=None,
                        help=f"where outputs go (default: runs/{milestone_id}/, quick runs runs/{milestone_id}/quick/)")
    parser.add_argument("--run-name", type=run_name_argument, default=os.environ.get("ML60_RUN") or None,
                        help=f"a named run, kept beside the others in runs/{milestone_id}/NAME/ (also RUN=NAME); "
                             "`make compare` shows every run of a milestone side by side")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def speed_figure(name: str, measured: float, reference: float, target: float, unit: str = "x",
                 higher_is_better: bool = True) -> dict:
    """One machine-speed figure of a run, for ``make progress``: information, never a failure.

    A milestone's ``check(metrics)`` says whether the *code* is right
    (accuracy, parity, gradients, the answers to bad input), the same on any
    machine.  How fast it ran is a property of the machine as much as of the
    code: a learner's laptop is not the 2-core reference machine the course
    was measured on.  So a milestone may also define ``speed(metrics)``, a list
    of these: the measured figure beside the reference machine's and the
    target, and whether this machine met it.
    """
    met = measured >= target if higher_is_better else measured <= target
    return {"name": name, "measured": measured, "reference": reference, "target": target, "unit": unit,
            "higher_is_better": higher_is_better, "met": bool(met)}


def speed_text(figure: dict) -> str:
    unit = figure["unit"]
    fmt = (lambda v: f"{v:.2f}{unit}") if unit == "x" else (lambda v: f"{v:.1f} {unit}")
    relation = ">=" if figure["higher_is_better"] else "<="
    verdict = "met" if figure["met"] else "not met on this machine"
    return (f"{figure['name']} {fmt(figure['measured'])} (reference machine {fmt(figure['reference'])}, "
            f"target {relation} {fmt(figure['target'])}: {verdict})")


def is_full_real_run(metrics: dict) -> bool:
    """True for a full (not quick) run on real data: the runs whose figures meet the real targets."""
    return not metrics.get("quick") and bool(metrics.get("data", {}).get("real_data"))


def run_name_argument(value: str) -> str:
    try:
        return check_run_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def start_run(milestone_id: str, args: argparse.Namespace) -> Path:
    """The folder this run writes into: a staging folder that takes the run's place when it finishes.

    The run's own folder is ``--run-dir`` if given, else ``runs/<id>/``
    (``quick/`` for a quick run, ``NAME/`` for ``--run-name NAME``); see
    :mod:`common.runs`.  Until :func:`finish_run`, the previous run there
    stays whole: a failed or interrupted run destroys nothing.
    """
    run_name = getattr(args, "run_name", None)
    final = Path(args.run_dir) if args.run_dir is not None else run_path(
        milestone_id, name=run_name, quick=bool(args.quick))
    staging = stage_run(final)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, even in a log file
    print(f"[run] {milestone_id}: this run goes to {final}/ when it finishes")
    return staging


def finish_run(run_dir: Path, milestone_id: str, args: argparse.Namespace, *, key_figure: dict,
               **metrics) -> dict:
    """Write the standard header plus ``metrics`` into ``run_dir/metrics.json``.

    ``key_figure`` is what ``make quickstart`` and ``make progress`` show:
    ``{"name": "test_accuracy", "value": 0.981, "display": "98.1% test accuracy"}``.
    """
    from common.benchmark import environment_stamp

    header = dict(milestone=milestone_id, quick=bool(args.quick), seed=args.seed,
                  run_name=getattr(args, "run_name", None), arguments=dict(vars(args)),
                  finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  key_figure=key_figure, environment=environment_stamp())
    final = final_folder(run_dir)
    if final is None:                      # a folder start_run did not stage: write in place
        return update_metrics(run_dir, **header, **metrics)
    written = update_metrics(run_dir, **moved_paths(to_jsonable({**header, **metrics}), Path(run_dir), final))
    publish_run(run_dir)
    files = sorted(p.name for p in final.iterdir() if not p.name.startswith(".") and (final / p.name).is_file())
    print(f"[run] {final}/ now holds this run: {', '.join(files)}")
    return written
