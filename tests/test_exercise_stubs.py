"""The stub proof, phase 1 (days 1-20): see tests/stub_proof.py."""

from __future__ import annotations

import pytest

from tests.stub_proof import prove_course_order


@pytest.mark.slow
def test_stubs_in_course_order_phase1(tmp_path):
    prove_course_order(tmp_path, "p1-numpy", "p1-refactor")
