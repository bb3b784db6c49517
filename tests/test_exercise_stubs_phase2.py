"""The stub proof, phase 2 (days 21-40): see tests/stub_proof.py."""

from __future__ import annotations

import pytest

from tests.stub_proof import prove_course_order


@pytest.mark.slow
def test_stubs_in_course_order_phase2(tmp_path):
    prove_course_order(tmp_path, "p2-data", "p2-search")
