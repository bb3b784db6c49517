"""p1-autograd: every demonstration holds on this PyTorch, and the graph walk finds the leaves."""

from __future__ import annotations

import pytest
import torch

from phase1_foundation import p1_autograd

pytestmark = getattr(pytest.mark, "p1-autograd")


def test_run_passes_its_check_and_draws_the_graph(tmp_path):
    metrics = p1_autograd.main(["--quick", "--run-dir", str(tmp_path), "--device", "cpu"])
    assert p1_autograd.check(metrics) == []
    assert metrics["demonstrations_passed"] == 5
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"


def test_graph_walk_reaches_every_leaf():
    a = torch.randn(2, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    loss = (a * b + a.exp()).sum()
    nodes = [name for _, name in p1_autograd.walk_graph(loss.grad_fn, {id(a): "a", id(b): "b"})]
    assert nodes[0] == "SumBackward0"
    assert any("leaf a" in n for n in nodes) and any("leaf b" in n for n in nodes)


def test_data_versus_detach_outcomes():
    result = p1_autograd.data_versus_detach()
    assert result["detach_raises"] and result["data_gives_silently_wrong_gradient"]
    assert result["data_gradient"] == [0.0, 0.0, 0.0] and min(result["correct_gradient"]) > 0.1


def test_check_reports_a_failed_demonstration():
    metrics = {"demonstrations_total": 5,
               "demonstrations": {"zero_grad": {"doubles_without_zero_grad": False}}}
    assert p1_autograd.check(metrics) == ["demonstration 'zero_grad' did not behave as described"]
