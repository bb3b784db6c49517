"""The command line and the Makefile: help lists every milestone, progress and quickstart behave."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml60 import cli
from ml60.milestones import MILESTONES, by_id

pytestmark = pytest.mark.foundation
ROOT = Path(__file__).resolve().parent.parent


def test_registry_matches_the_design_card():
    ids = [m.id for m in MILESTONES]
    assert ids == ["p1-numpy", "p1-autograd", "p1-manual", "p1-train", "p1-refactor", "p2-data", "p2-cnn",
                   "p2-eval", "p2-search", "p3-onnx", "p3-serve", "p3-deploy", "p3-monitor"]
    days = [d for m in MILESTONES for d in range(int(m.days.split("-")[0]), int(m.days.split("-")[1]) + 1)]
    assert days == list(range(1, 61)), "the milestones cover days 1-60 once each"
    with pytest.raises(KeyError, match="unknown milestone"):
        by_id("p4-magic")


def test_every_milestone_has_a_pytest_marker():
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    declared = {m.split(":")[0] for m in markers}
    assert {m.id for m in MILESTONES} <= declared


def test_make_help_lists_every_milestone_with_its_days():
    out = subprocess.run(["make", "-s", "help", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for m in MILESTONES:
        assert f"make {m.id}" in out and f"days {m.days}" in out
    assert "make quickstart" in out and "make test" in out and "QUICK=1" in out and "DEVICE=" in out
    for target in ("make exercise M=", "make check M=", "make solution M=", "make diff M=", "make exercises"):
        assert target in out


def test_unbuilt_milestone_says_so(capsys, monkeypatch):
    fake = type(MILESTONES[0])("p9-x", "1-1", 1, "phase1_foundation.does_not_exist", "nothing")
    assert cli.run_milestone(fake, []) == 2
    assert "not built yet" in capsys.readouterr().err


def test_progress_reports_runs_and_checks(tmp_path, monkeypatch, capsys):
    """Runs, their checks and the exercises column (the grading itself is proven in tests/test_exercise_stubs.py)."""
    from ml60 import grading

    monkeypatch.setattr(grading, "solved_counts", lambda: {"p1-numpy": (2, 5)})
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    built = [m for m in MILESTONES if m.built]
    if built:
        damaged = tmp_path / built[0].id
        damaged.mkdir()
        (damaged / "metrics.json").write_text("{not json")
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    for m in MILESTONES:
        assert m.id in out
    assert "exercises solved" in out and "2/5" in out
    if built:
        assert "run folder damaged" in out
    assert ("not built yet" in out) == any(not m.built for m in MILESTONES)


def test_unknown_command_and_milestone():
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["run", "p4-magic"]) == 2


def test_quickstart_summarises_each_milestone(tmp_path, monkeypatch, capsys):
    """The summary table: key figure, data kind, output folder; failures counted; stand-ins pointed out."""
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    Milestone = type(MILESTONES[0])
    fake = [Milestone("p1-numpy", "1-3", 1, "json", "a"), Milestone("p1-autograd", "4-7", 1, "json", "b"),
            Milestone("p1-manual", "8-12", 1, "json", "c")]
    results = {"p1-numpy": ({"key_figure": {"display": "42% test accuracy"}, "data": {"real_data": False}}, 0),
               "p1-autograd": ({"key_figure": {"display": "5/5 hold"}}, 0), "p1-manual": (None, 3)}

    def fake_run(m, extra):
        assert extra == ["--quick"]
        metrics, code = results[m.id]
        if metrics is not None:
            (tmp_path / m.id / "quick").mkdir(parents=True)
            (tmp_path / m.id / "quick" / "metrics.json").write_text(json.dumps(metrics))
        return code

    monkeypatch.setattr(cli, "MILESTONES", tuple(fake))
    monkeypatch.setattr(cli, "run_milestone", fake_run)
    assert cli.cmd_quickstart() == 1  # one milestone failed
    out = capsys.readouterr().out
    assert "42% test accuracy" in out and "offline stand-in" in out and "no dataset" in out
    assert "FAILED (exit 3)" in out and "Data section" in out


def test_progress_tells_a_wrong_answer_from_a_slow_machine(tmp_path, monkeypatch, capsys):
    """A run that is right but slow passes its check, and its speed is shown beside the reference machine's."""
    from ml60 import grading

    monkeypatch.setattr(grading, "solved_counts", lambda: {})
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    slow = {"quick": False, "data": {"real_data": True}, "recipe_name": "cpu", "test_accuracy": 0.87,
            "training_minutes": 75.0, "key_figure": {"display": "87.00% test accuracy"}}
    (tmp_path / "p2-cnn").mkdir()
    (tmp_path / "p2-cnn" / "metrics.json").write_text(json.dumps(slow))
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("p2-cnn "))
    assert row.rstrip().endswith("PASS"), row
    assert ("p2-cnn: cpu recipe training time 75.0 min (reference machine 32.5 min, target <= 60.0 min: "
            "not met on this machine)") in out
    wrong = dict(slow, test_accuracy=0.70, training_minutes=30.0)
    (tmp_path / "p2-cnn" / "metrics.json").write_text(json.dumps(wrong))
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("p2-cnn "))
    assert "FAIL: test accuracy 70.00%" in row
    assert "30.0 min (reference machine 32.5 min, target <= 60.0 min: met)" in out


def test_progress_says_which_targets_a_quick_run_is_not_held_to(tmp_path, monkeypatch, capsys):
    """A quick run that prints a miss of a full-run target (p1-refactor: 1.11 points from p1-train, where a
    full run is held to 0.3) passes on the quick targets; progress says so, and names the miss."""
    from ml60 import grading
    from phase1_foundation import p1_refactor

    monkeypatch.setattr(grading, "solved_counts", lambda: {})
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    quick = {"quick": True, "data": {"real_data": True},
             "fast": {"median_test_accuracy": p1_refactor.QUICK_TARGET_ACCURACY + 0.01, "test_accuracies": [0.95],
                      "runs": [{"epochs": 2}]},
             "reproduce": {"difference": -0.0111}, "key_figure": {"display": "95.00% fast path"}}
    (tmp_path / "p1-refactor" / "quick").mkdir(parents=True)
    (tmp_path / "p1-refactor" / "quick" / "metrics.json").write_text(json.dumps(quick))
    assert cli.main(["progress"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("p1-refactor "))
    assert row.rstrip().endswith("PASS (quick targets)"), row
    said = next(line for line in out.splitlines() if line.strip().startswith("p1-refactor: "))
    assert "refactor differs from p1-train by -1.11 points" in said and "fewer than 3 fast-path seeds" in said, said
    assert "Only a full run" in out
    within = dict(quick, fast=dict(quick["fast"], median_test_accuracy=0.99, test_accuracies=[0.99] * 3),
                  reproduce={"difference": 0.001})
    (tmp_path / "p1-refactor" / "quick" / "metrics.json").write_text(json.dumps(within))
    assert cli.main(["progress"]) == 0
    assert "p1-refactor: within the full targets too" in capsys.readouterr().out


def test_text_table_pads_each_column_to_its_widest_cell():
    from common.text_table import text_table

    assert text_table(("id", "check"), [("p1-numpy", "PASS"), ("p2", None)]).splitlines() == [
        "id        check", "--------  -----", "p1-numpy  PASS", "p2        None"]
    assert text_table(("a", "bb"), []) == "a  bb\n-  --"
