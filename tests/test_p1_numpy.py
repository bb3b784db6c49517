"""p1-numpy: the hand-written gradients are right, the lesson runs, NumPy alone reaches 95% on MNIST."""

from __future__ import annotations

import numpy as np
import pytest

from phase1_foundation import numpy_net, p1_numpy

pytestmark = getattr(pytest.mark, "p1-numpy")  # the milestone id is the marker


def small_problem(seed=0, n=12):
    rng = np.random.default_rng(seed)
    params = numpy_net.init_params(784, 16, 10, rng=rng, dtype=np.float64)
    return params, rng.standard_normal((n, 784)), rng.integers(0, 10, n), rng


def test_backward_matches_centred_difference_and_autograd():
    params, x, y, rng = small_problem()
    numeric = numpy_net.numerical_gradient_check(params, x, y, rng=rng)
    autograd = numpy_net.torch_gradient_check(params, x, y)
    assert max(numeric.values()) < p1_numpy.GRADCHECK_TOLERANCE, numeric
    assert max(autograd.values()) < p1_numpy.AUTOGRAD_TOLERANCE, autograd


def test_gradient_check_catches_a_wrong_backward(monkeypatch):
    """A check that cannot fail proves nothing: forget the ReLU mask and it must complain."""
    params, x, y, rng = small_problem(1)

    def backward_without_relu_mask(params, cache, dlogits):
        grads = {"W2": cache["h"].T @ dlogits, "b2": dlogits.sum(axis=0)}
        dz1 = dlogits @ params["W2"].T  # bug: should be masked by (z1 > 0)
        grads["W1"], grads["b1"] = cache["x"].T @ dz1, dz1.sum(axis=0)
        return grads

    monkeypatch.setattr(numpy_net, "backward", backward_without_relu_mask)
    errors = numpy_net.numerical_gradient_check(params, x, y, rng=rng)
    assert errors["W1"] > 1e-3 and errors["b1"] > 1e-3
    assert errors["W2"] < 1e-6  # the layers after the bug are still right


def test_in_float32_the_check_cannot_tell_a_right_gradient_from_a_wrong_one():
    """The guide's float32 lesson: the same correct backward fails the check by far more than its tolerance."""
    params, x, y, _ = small_problem(2)
    in_64 = numpy_net.numerical_gradient_check(params, x, y, rng=np.random.default_rng(0))
    in_32 = numpy_net.numerical_gradient_check(params, x, y, rng=np.random.default_rng(0), dtype=np.float32)
    assert max(in_64.values()) < p1_numpy.GRADCHECK_TOLERANCE, in_64
    assert min(in_32.values()) > 1e-2, in_32
    assert params["W1"].dtype == np.float64, "the check works on copies: the caller's parameters keep their dtype"


def test_softmax_cross_entropy_is_stable_and_correct():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    loss, grad = numpy_net.softmax_cross_entropy(logits.copy(), np.array([0, 2]))
    assert np.isfinite(loss) and loss == pytest.approx(np.log(3) / 2)
    assert np.allclose(grad.sum(axis=1), 0.0)


def test_three_matmuls_agree():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    assert np.allclose(p1_numpy.matmul_triple_loop(a, b), a @ b)
    assert np.allclose(p1_numpy.matmul_row_by_column(a, b), a @ b)


@pytest.mark.slow
def test_quick_run_writes_its_folder_and_passes_its_check(tmp_path):
    metrics = p1_numpy.main(["--quick", "--run-dir", str(tmp_path)])
    assert p1_numpy.check(metrics) == []
    for name in ("metrics.json", "curves.png", "matmul_timings.png", "first_layer_weights.png"):
        assert (tmp_path / name).is_file(), name
    assert metrics["milestone"] == "p1-numpy" and metrics["quick"] is True
    assert metrics["broadcasting"]["table_shape"] == [3, 4] and "broadcast" in metrics["broadcasting"]["mismatch_error"]


def test_check_rejects_a_bad_run():
    bad = {"quick": False, "data": {"real_data": True}, "test_accuracy": 0.93,
           "gradient_check": {"vs_centred_difference": {"W1": 1e-3}, "vs_torch_autograd": {"W1": 1e-16}},
           "matmul": {"max_abs_error": {"triple_loop": 0.0}}}
    problems = p1_numpy.check(bad)
    assert any("95%" in p for p in problems) and any("W1" in p for p in problems)


@pytest.mark.real_data
@pytest.mark.slow
def test_full_run_on_real_mnist_reaches_95_percent(real_data_dir, tmp_path):
    metrics = p1_numpy.main(["--data-dir", str(real_data_dir), "--run-dir", str(tmp_path)])
    assert metrics["data"]["real_data"] and metrics["data"]["test_used"] == 10_000
    assert metrics["test_accuracy"] >= 0.95
    assert p1_numpy.check(metrics) == []
