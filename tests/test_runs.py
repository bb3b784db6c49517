"""Run folders: quick and named runs keep their own folders, and a run takes its folder's place only when it finishes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from common import runs
from common.script import finish_run, milestone_parser, start_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.delenv("ML60_RUN", raising=False)
    monkeypatch.delenv("QUICK", raising=False)
    return tmp_path / "runs"


def arguments(*argv: str) -> argparse.Namespace:
    parser = milestone_parser("p0-demo", "a demonstration milestone")
    parser.add_argument("--momentum", type=float, default=0.9)
    return parser.parse_args(list(argv))


def a_run(args: argparse.Namespace, files: dict[str, str], *, fail: bool = False) -> Path:
    """One run of the demonstration milestone: write ``files``, then finish (or fail before finishing)."""
    staging = start_run("p0-demo", args)
    for name, text in files.items():
        (staging / name).write_text(text)
    if fail:
        raise RuntimeError("the run failed halfway")
    finish_run(staging, "p0-demo", args, key_figure={"name": "x", "value": 1, "display": "1"},
               picture=str(staging / "curves.png"), history=[{"epoch": 1, "val_accuracy": 0.5, "seconds": 1.0}])
    return staging


def test_each_kind_of_run_has_its_own_folder(runs_dir):
    assert runs.run_path("p2-cnn") == runs_dir / "p2-cnn"
    assert runs.run_path("p2-cnn", quick=True) == runs_dir / "p2-cnn" / "quick"
    assert runs.run_path("p1-numpy", name="momentum0") == runs_dir / "p1-numpy" / "momentum0"
    assert runs.run_path("p1-numpy", name="momentum0", quick=True) == runs_dir / "p1-numpy" / "momentum0-quick"
    for bad in ("quick", "x-quick", "../up", "a/b", ".hidden", "", "with space", "x" * 65):
        with pytest.raises(ValueError, match="run name"):
            runs.run_path("p1-numpy", name=bad)
    with pytest.raises(SystemExit):
        arguments("--run-name", "../elsewhere")


def test_a_finished_run_replaces_the_previous_one_and_keeps_the_other_runs(runs_dir):
    full = runs_dir / "p0-demo"
    a_run(arguments(), {"model.pt": "first", "old-only.png": "first"})
    a_run(arguments("--quick"), {"model.pt": "quick"})
    a_run(arguments("--run-name", "momentum0", "--momentum", "0"), {"model.pt": "named"})
    (full / "notes.txt").write_text("the learner's own file")
    a_run(arguments(), {"model.pt": "second"})

    assert (full / "model.pt").read_text() == "second"
    assert not (full / "old-only.png").exists(), "what only the previous run produced goes with it"
    assert (full / "notes.txt").read_text() == "the learner's own file", "a file no run produced is never removed"
    assert (full / "quick" / "model.pt").read_text() == "quick", "a full run must not touch the quick run"
    assert (full / "momentum0" / "model.pt").read_text() == "named"
    metrics = runs.read_metrics(full)
    assert metrics["picture"] == str(full / "curves.png"), "paths recorded during the run point where it ended up"
    assert metrics["arguments"]["momentum"] == 0.9 and metrics["run_name"] is None
    assert runs.read_metrics(full / "momentum0")["arguments"]["momentum"] == 0.0
    assert not list(full.glob(runs.STAGING_PREFIX + "*")), "the staging folder is gone after a finished run"


def test_a_failed_run_leaves_the_previous_run_whole(runs_dir):
    full = runs_dir / "p0-demo"
    a_run(arguments(), {"model.pt": "good"})
    before = runs.read_metrics(full)
    with pytest.raises(RuntimeError):
        a_run(arguments(), {"model.pt": "half-trained"}, fail=True)
    assert (full / "model.pt").read_text() == "good"
    assert runs.read_metrics(full) == before


def test_an_interrupted_run_leaves_the_previous_run_whole_and_its_leftovers_are_cleared(runs_dir, capsys):
    """A process killed mid-run (os._exit: no cleanup at all) leaves a staging folder; the next run removes it."""
    full = runs_dir / "p0-demo"
    a_run(arguments(), {"model.pt": "good"})
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import os; from pathlib import Path; "
              "from common.runs import stage_run; staging = stage_run(Path(sys.argv[2])); "
              "(staging / 'model.pt').write_text('interrupted'); os._exit(9)")
    died = subprocess.run([sys.executable, "-c", script, str(ROOT), str(full)], env={"PATH": "/usr/bin:/bin"})
    assert died.returncode == 9
    assert len(list(full.glob(runs.STAGING_PREFIX + "*"))) == 1
    assert (full / "model.pt").read_text() == "good" and runs.finished(full)
    a_run(arguments(), {"model.pt": "next"})
    assert "did not finish" in capsys.readouterr().out
    assert not list(full.glob(runs.STAGING_PREFIX + "*")) and (full / "model.pt").read_text() == "next"


def test_the_staging_folder_of_a_live_run_is_left_alone(runs_dir):
    full = runs_dir / "p0-demo"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        busy = full / f"{runs.STAGING_PREFIX}{live.pid}"
        busy.mkdir(parents=True)
        a_run(arguments(), {"model.pt": "mine"})
        assert busy.is_dir(), "another process's run in progress was removed"
    finally:
        live.kill()
        live.wait()


def test_later_milestones_read_the_full_run_when_there_is_one(runs_dir):
    full, quick = runs.run_path("p0-demo"), runs.run_path("p0-demo", quick=True)
    assert runs.upstream_run("p0-demo") == full, "with no run at all, the full run's folder (the error names it)"
    a_run(arguments("--quick"), {"model.pt": "quick"})
    assert runs.upstream_run("p0-demo") == quick
    assert "quick run" in runs.describe_run(quick)
    a_run(arguments(), {"model.pt": "full"})
    assert runs.upstream_run("p0-demo") == full
    assert "full run" in runs.describe_run(full)


def test_compare_puts_every_run_side_by_side(runs_dir, capsys):
    from ml60 import compare

    a_run(arguments(), {"model.pt": "full"})
    a_run(arguments("--run-name", "momentum0", "--momentum", "0"), {"model.pt": "named"})
    a_run(arguments("--quick"), {"model.pt": "quick"})
    found = compare.find_runs("p0-demo")
    assert [label for label, _, _ in found] == ["(default)", "momentum0", "quick"]
    header, rows = compare.table_rows(found)
    assert "momentum" in header and "quick" in header, f"the differing settings are columns: {header}"
    assert [row[header.index("momentum")] for row in rows] == [0.9, 0.0, 0.9]
    picture = runs.run_path("p0-demo") / "compare.png"
    assert compare.plot_curves("p0-demo", found, picture) == ["val_accuracy"]
    assert picture.stat().st_size > 5_000


def test_run_equals_name_reaches_the_script_and_compare_reads_it(runs_dir, monkeypatch, capsys):
    """`make p1-numpy RUN=sgd` exports ML60_RUN=sgd; `make compare M=p1-numpy` prints every run's row."""
    from ml60 import cli

    monkeypatch.setenv("ML60_RUN", "sgd")
    assert arguments().run_name == "sgd"
    monkeypatch.delenv("ML60_RUN")
    for argv in ([], ["--run-name", "sgd", "--momentum", "0"]):
        args = milestone_parser("p1-numpy", "x").parse_args(argv[:2])
        args.momentum = 0.0 if argv else 0.9
        staging = start_run("p1-numpy", args)
        finish_run(staging, "p1-numpy", args, key_figure={"name": "a", "value": 0.9, "display": "90.00% test accuracy"},
                   history=[{"epoch": e, "val_accuracy": 0.5 + e / 10, "train_loss": 1 / e, "seconds": 1.0}
                            for e in (1, 2, 3)])
    capsys.readouterr()
    assert cli.main(["compare", "p1-numpy"]) == 0
    out = capsys.readouterr().out
    assert "2 finished run(s)" in out and "sgd" in out and "(default)" in out and "momentum" in out
    assert (runs_dir / "p1-numpy" / "compare.png").is_file()
    assert cli.main(["compare", "p1-autograd"]) == 1, "no run: an error that says how to make one"
    assert "make p1-autograd" in capsys.readouterr().out
