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

from common.runs import run_dir_for, update_metrics

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
    parser.add_argument("--run-dir", default=None, help=f"where outputs go (default: runs/{milestone_id})")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def is_full_real_run(metrics: dict) -> bool:
    """True for a full (not quick) run on real data: the runs whose figures meet the real targets."""
    return not metrics.get("quick") and bool(metrics.get("data", {}).get("real_data"))


def start_run(milestone_id: str, args: argparse.Namespace) -> Path:
    """Create the run folder and return it; a fresh run replaces the old ``metrics.json``."""
    run_dir = run_dir_for(milestone_id, args.run_dir)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, even in a log file
    return run_dir


def finish_run(run_dir: Path, milestone_id: str, args: argparse.Namespace, *, key_figure: dict,
               **metrics) -> dict:
    """Write the standard header plus ``metrics`` into ``run_dir/metrics.json``.

    ``key_figure`` is what ``make quickstart`` and ``make progress`` show:
    ``{"name": "test_accuracy", "value": 0.981, "display": "98.1% test accuracy"}``.
    """
    from common.benchmark import environment_stamp

    return update_metrics(
        run_dir, milestone=milestone_id, quick=bool(args.quick), seed=args.seed,
        finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        key_figure=key_figure, environment=environment_stamp(), **metrics)
