"""The stub proof, phase 3 (days 41-60), reading the session's quick p2-cnn model: see tests/stub_proof.py."""

from __future__ import annotations

import os

import pytest

from tests.stub_proof import prove_course_order


@pytest.mark.slow
def test_stubs_in_course_order_phase3(tmp_path, tmp_path_factory, quick_p2_cnn_run):
    # The data that quick model was trained on (conftest's quick_p2_cnn_run): real CIFAR-10 where
    # ML60_DATA_DIR holds it, the stand-in otherwise.  p3-onnx rightly refuses a model from other data.
    same_data = {"ML60_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "ml60-cache")}
    if os.environ.get("ML60_DATA_DIR"):
        same_data["ML60_DATA_DIR"] = os.environ["ML60_DATA_DIR"]
    prove_course_order(tmp_path, "p3-onnx", "p3-monitor", upstream_runs={"p2-cnn": quick_p2_cnn_run},
                       data_env=same_data)
