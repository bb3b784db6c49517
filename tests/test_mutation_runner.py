"""The mutation-testing runner's own logic (``ml60/mutation.py``), without running mutmut: milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml60 import mutation

ROOT = Path(__file__).resolve().parent.parent

SHOW = """# phase3_production.serving.drift.x_drifted_features__mutmut_7: survived
--- phase3_production/serving/drift.py
+++ phase3_production/serving/drift.py
@@ -3,7 +3,7 @@
     m = len(p_values)
     flagged = []
     for k, name in enumerate(sorted(p_values, key=p_values.get)):
-        if not p_values[name] < alpha / (m - k):
+        if not p_values[name] <= alpha / (m - k):
             break
         flagged.append(name)
"""


def test_every_target_names_a_file_and_test_files_that_exist():
    names = [t.name for t in mutation.TARGETS]
    assert len(names) == len(set(names))
    for target in mutation.TARGETS:
        assert (ROOT / target.source).is_file(), target.source
        for arg in target.tests:
            if arg.startswith("tests/"):
                assert (ROOT / arg.split("::")[0]).is_file(), arg


def test_the_mutmut_section_names_one_module_and_its_tests_and_replaces_an_old_one():
    target = mutation.Target("drift", "phase3_production/serving/drift.py", ("tests/test_p3_monitor.py", "-k", "not x"))
    section = mutation.mutmut_config(target)
    assert 'only_mutate = ["phase3_production/serving/drift.py"]' in section
    assert 'pytest_add_cli_args_test_selection = ["tests/test_p3_monitor.py", "-k", "not x"]' in section
    old = "[project]\nname = 'x'\n\n[tool.mutmut]\nonly_mutate = ['old.py']\n\n[tool.other]\na = 1\n"
    new = mutation.with_mutmut_section(old, section)
    assert new.count("[tool.mutmut]") == 1 and "old.py" not in new and "[tool.other]\na = 1" in new
    import tomllib

    assert tomllib.loads(new)["tool"]["mutmut"]["process_isolation"] == "forkserver"


def test_mutant_names_for_functions_and_methods():
    target = mutation.Target("x", "phase2_depth/data.py", (), functions=("random_flip", "CifarAugment.__call__"))
    assert mutation.mutant_globs(target) == ["phase2_depth.data.x_random_flip__mutmut_*",
                                             "phase2_depth.data.xǁCifarAugmentǁ__call____mutmut_*"]
    assert mutation.mutant_globs(mutation.Target("y", "common/schedules.py", ())) == []


def test_results_lines_become_verdicts():
    text = ("    a.x_f__mutmut_1: killed\n    a.xǁCǁm__mutmut_2: survived\n    a.x_f__mutmut_3: no tests\n"
            "Generating mutants\n")
    assert mutation.parse_results(text) == {"a.x_f__mutmut_1": "killed", "a.xǁCǁm__mutmut_2": "survived",
                                            "a.x_f__mutmut_3": "no tests"}


def test_a_diff_becomes_the_file_line_and_the_change():
    source = "import x\n\n\n@decorator\ndef drifted_features(p_values, alpha):\n    pass\n"
    start = mutation.function_start(source, "m.x_drifted_features__mutmut_7")
    assert start == 4                                      # the decorator's line: mutmut's diff starts there
    # the hunk starts at the function's line 3; three unchanged lines later comes the change, at its line 6
    assert mutation.describe(SHOW, start) == (start + 6 - 1, "if not p_values[name] < alpha / (m - k):",
                                              "if not p_values[name] <= alpha / (m - k):")
    method = "class A:\n    def f(self):\n        pass\n\n\nclass B:\n    def f(self):\n        pass\n"
    assert mutation.function_start(method, "m.xǁBǁf__mutmut_1") == 7


def test_judging_counts_equivalent_mutants_apart(monkeypatch):
    survivor = {"mutant": "m.x_f__mutmut_1", "status": "survived", "line": 3, "original": "a < b",
                "mutated": "a <= b"}
    entry = {"module": "m.py", "mutants": 10, "killed": 8, "survived": 2, "seconds": 1.0,
             "not_killed": [survivor, dict(survivor, mutated="a > b")]}
    monkeypatch.setattr(mutation, "EQUIVALENT", {("m.py", "a < b", "a <= b"): "a and b are never equal"})
    judged = mutation.judge(json.loads(json.dumps(entry)))
    assert judged["equivalent"] == 1 and judged["score"] == 0.8 and judged["score_without_equivalent"] == 0.8889
    record = {"modules": {"m": judged}, "summary": mutation.summary({"m": judged})}
    assert record["summary"]["score"] == 0.8 and record["summary"]["equivalent"] == 1
    lines = mutation.table(record).splitlines()
    assert lines[2].split()[:5] == ["m", "10", "8", "2", "1"]
    assert "m.py:3  survived: a < b  ->  a <= b  [equivalent: a and b are never equal]" in lines[-2]


def test_unknown_modules_are_named():
    with pytest.raises(mutation.MutationError, match="unknown module nope; choose from numpy_net"):
        mutation.choose(["nope"])
