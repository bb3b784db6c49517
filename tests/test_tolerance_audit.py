"""The tolerance audit (tools/tolerance_audit): the splice changes no behaviour and no line, the probe measures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

from tools.tolerance_audit import report, splice

SOURCE = textwrap.dedent('''\
    import math
    import numpy as np
    TOLERANCE = 1e-3


    def test_sites():
        drift = 2e-5
        assert drift < TOLERANCE, "under"
        assert 1e-4 < 0.5          # the tolerance on the left: read as 0.5 > 1e-4
        assert np.allclose(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2.5e-7]), atol=1e-5, rtol=0)
        assert not math.isclose(1.0, 1.1, rel_tol=1e-3)
        assert 0.30000000000000004 == __import__("pytest").approx(0.3)


    def check(x):
        return ["too far"] if x > 1e-2 else []


    def other(x):
        return x < 1e-9             # not audited: only check() is, in a milestone module
''')


def test_splice_keeps_every_line_and_finds_every_site():
    new, sites = splice.splice_file(SOURCE, "tests/test_x.py", None, 0)
    assert new.decode().count("\n") == SOURCE.count("\n")
    for site in sites:                      # each site still starts on its own original line
        assert new.decode().splitlines()[site.line - 1].lstrip().startswith(("assert", "return"))
    assert [(s.kind, s.line) for s in sites] == [("compare", 8), ("compare", 9), ("close", 10), ("close", 11),
                                                 ("approx", 12), ("compare", 16), ("compare", 20)]
    assert sites[1].op == ">" and sites[1].tolerance == "1e-4"
    _, only_check = splice.splice_file(SOURCE, "phase1_foundation/p1_x.py", {"check"}, 0)
    assert [s.line for s in only_check] == [16]


def test_probe_records_the_values_and_report_reads_the_margins(tmp_path):
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests" / "__init__.py").write_text("")
    (tree / "tests" / "_tolprobe.py").write_text((splice.Path(splice.__file__).with_name("probe.py")).read_text())
    new, sites = splice.splice_file(SOURCE, "tests/test_x.py", None, 0)
    (tree / "tests" / "test_x.py").write_bytes(new)
    records = tmp_path / "records"
    records.mkdir()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "tests._tolprobe",
                           "-p", "no:cacheprovider", "tests/test_x.py"], cwd=tree, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TOLPROBE_OUT": str(records), "PYTHONPATH": str(tree)})
    assert done.returncode == 0, done.stdout + done.stderr
    merged = report.load(records)
    assert merged["0"]["ref"]["value"] == [2e-5, 2e-5]
    table = {r["site"]: r for r in report.rows(splice.as_dicts(sites), {"t1": merged})}
    assert math.isclose(table["tests/test_x.py:8"]["margin"], 50.0)                 # 1e-3 / 2e-5
    assert math.isclose(table["tests/test_x.py:9"]["margin"], 5000.0)               # 0.5 / 1e-4, read as "over"
    assert math.isclose(table["tests/test_x.py:10"]["margin"], 40.0, rel_tol=1e-6)  # 2.5e-7 used of 1e-5
    assert table["tests/test_x.py:10"]["flag"] is False
    assert table["tests/test_x.py:11"]["margin"] > 90                              # apart: 0.1 / 1.1e-3
    assert table["tests/test_x.py:12"]["margin"] > 1e5                              # approx: 5.6e-17 of 3e-7
    assert table["tests/test_x.py:16"]["reading"] == "not reached"
    assert "| tests/test_x.py:8 | test_sites | `< TOLERANCE` | 2e-05 | yes | 50x |" in report.markdown(list(table.values()), ["t1"])
    assert json.dumps(list(table.values()), default=str)


def test_a_margin_under_ten_is_flagged():
    site = {"id": 0, "kind": "compare", "op": "<", "text": "x < 1e-3", "file": "f", "line": 1, "function": "",
            "tolerance": "1e-3"}
    rows = report.rows([site], {"t2": {"0": {"ref": {"value": [1e-5, 2e-4], "tol": [1e-3, 1e-3]}}}})
    assert rows[0]["flag"] and math.isclose(rows[0]["margin"], 5.0)
    both = report.rows([site], {"t2": {"0": {"ref": {"value": [1e-5, 2e-3], "tol": [1e-3, 1e-3]}}}})
    assert both[0]["margin"] is None and both[0]["reading"].startswith("both sides")


def test_an_explained_site_is_cleared_only_while_no_configuration_moves_it():
    """A bound or a sampling statistic is not judged by tolerance / value, but threads must not move it."""
    site = {"id": 0, "kind": "compare", "op": "<", "text": "p.get(\"max_std_diff\", 1) < PIPELINE_TOLERANCE",
            "file": "phase2_depth/p2_data.py", "line": 150, "function": "check", "tolerance": "PIPELINE_TOLERANCE"}
    fixed = {"ref": {"value": [1e-3, 4e-3], "tol": [0.02, 0.02]}}
    cleared = report.rows([site], {"t1": {"0": fixed}, "t2": {"0": fixed}})[0]
    assert cleared["explained"].startswith("a statistic of random draws") and cleared["same_everywhere"]
    assert math.isclose(cleared["margin"], 5.0) and not cleared["flag"]
    moved = report.rows([site], {"t1": {"0": fixed}, "t2": {"0": {"ref": {"value": [1e-3, 4.1e-3],
                                                                        "tol": [0.02, 0.02]}}}})[0]
    assert not moved["same_everywhere"] and moved["flag"]
    alone = report.rows([site], {"t1": {"0": fixed}})[0]
    assert alone["flag"], "one configuration cannot show that threads leave it alone"
    assert "explained: a statistic" in report.markdown([cleared], ["t1", "t2"])
