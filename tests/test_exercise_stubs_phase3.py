"""The stub proof, phase 3 (days 41-60), reading the session's quick p2-cnn model: see tests/stub_proof.py."""

from __future__ import annotations

import pytest

from tests.stub_proof import prove_course_order


@pytest.mark.slow
def test_stubs_in_course_order_phase3(tmp_path, quick_p2_cnn_run):
    prove_course_order(tmp_path, "p3-onnx", "p3-monitor", upstream_runs={"p2-cnn": quick_p2_cnn_run})
