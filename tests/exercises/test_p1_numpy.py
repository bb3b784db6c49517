"""Checks for p1-numpy's exercises (``make check M=p1-numpy``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
by torch autograd in float64, by a centred difference, or by NumPy's ``@``.
The code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ml60.grading import exercise, expect, wrong_answer
from phase1_foundation import numpy_net, p1_numpy


def small_net(seed: int = 0, n: int = 16, n_in: int = 20, hidden: int = 12, n_out: int = 5):
    """A small float64 network and batch: every check runs in milliseconds."""
    rng = np.random.default_rng(seed)
    params = {"W1": rng.standard_normal((n_in, hidden)) * 0.5, "b1": rng.standard_normal(hidden) * 0.1,
              "W2": rng.standard_normal((hidden, n_out)) * 0.5, "b2": rng.standard_normal(n_out) * 0.1}
    return params, rng.standard_normal((n, n_in)), rng.integers(0, n_out, n)


def torch_reference(params, x, y):
    """Logits, loss and every gradient from torch autograd (float64): the answer key."""
    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    z1 = torch.tensor(x) @ t["W1"] + t["b1"]
    logits = torch.relu(z1) @ t["W2"] + t["b2"]
    loss = F.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    dlogits = (torch.softmax(logits, 1) - F.one_hot(torch.tensor(y), logits.shape[1])) / len(y)
    return {"logits": logits.detach().numpy(), "z1": z1.detach().numpy(), "loss": loss.item(),
            "dlogits": dlogits.detach().numpy(), "grads": {k: v.grad.numpy() for k, v in t.items()}}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denominator = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denominator) if denominator else 0.0


# --------------------------------------------------------------------------- p1-numpy.1 matmul by hand


@exercise("p1-numpy.1")
def test_matmul_triple_loop_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))   # not square: catches swapped indices
    c = p1_numpy.matmul_triple_loop(a, b)
    expect(np.shape(c) == (4, 3), f"(4, 6) @ (6, 3) should be (4, 3), got shape {np.shape(c)}: "
                                  "loop i over rows of A and j over columns of B")
    error = float(np.abs(np.asarray(c) - a @ b).max())
    expect(error < 1e-9, f"entries differ from a @ b by up to {error:.2g}: C[i, j] is the sum over k of "
                         "a[i, k] * b[k, j]; is the running total reset for every (i, j), and does k run over "
                         "the shared dimension?")


@wrong_answer("p1-numpy.1", diagnosis="is the running total reset for every (i, j)")
def matmul_total_not_reset(a, b):
    """The running total starts once, outside the loops, so every entry carries the ones before it."""
    n, m = a.shape
    c = np.zeros((n, b.shape[1]))
    total = 0.0
    for i in range(n):
        for j in range(b.shape[1]):
            for k in range(m):
                total += a[i, k] * b[k, j]
            c[i, j] = total
    return c


@wrong_answer("p1-numpy.1", diagnosis="should be (4, 3)")
def matmul_wrong_shape(a, b):
    """The output is allocated as (rows of A, rows of B), as if both were square."""
    c = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(min(b.shape[0], b.shape[1])):
            c[i, j] = sum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return c


# --------------------------------------------------------------------------- p1-numpy.2 forward


@exercise("p1-numpy.2")
def test_forward_matches_torch():
    params, x, y = small_net()
    expected = torch_reference(params, x, y)
    logits, cache = numpy_net.forward(params, x)
    expect(np.shape(logits) == (16, 5), f"logits for 16 samples and 5 classes should be (16, 5), got {np.shape(logits)}")
    error = rel_err(logits, expected["logits"])
    without_relu = (x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]
    expect(rel_err(logits, without_relu) > 1e-9 or error < 1e-12,
           "the logits equal the network without ReLU: apply np.maximum(z1, 0) between the two layers")
    expect(error < 1e-12, f"logits differ from torch's by a relative {error:.2g}: "
                          "z1 = x @ W1 + b1, h = max(z1, 0), logits = h @ W2 + b2")
    for key in ("x", "z1", "h"):
        expect(isinstance(cache, dict) and key in cache, f"the cache has no {key!r}: backward needs x, z1 and h")
    expect(rel_err(cache["z1"], expected["z1"]) < 1e-12, "cache['z1'] is not x @ W1 + b1 (keep the value before ReLU)")


@wrong_answer("p1-numpy.2", diagnosis="apply np.maximum(z1, 0)")
def forward_without_relu(params, x):
    """Two affine maps and no non-linearity: the network collapses to one linear map."""
    z1 = x @ params["W1"] + params["b1"]
    return z1 @ params["W2"] + params["b2"], {"x": x, "z1": z1, "h": z1}


@wrong_answer("p1-numpy.2", diagnosis="keep the value before ReLU")
def forward_caches_relu_output_as_z1(params, x):
    """The cache stores h under the name z1, so backward's ReLU mask is taken after ReLU."""
    h = np.maximum(x @ params["W1"] + params["b1"], 0)
    return h @ params["W2"] + params["b2"], {"x": x, "z1": h, "h": h}


# --------------------------------------------------------------------------- p1-numpy.3 softmax cross-entropy


@exercise("p1-numpy.3")
def test_softmax_cross_entropy_matches_torch():
    params, x, y = small_net(seed=2)
    expected = torch_reference(params, x, y)
    loss, grad = numpy_net.softmax_cross_entropy(expected["logits"].copy(), y)
    expect(np.ndim(loss) == 0, f"the loss should be one number (the mean over the batch), got shape {np.shape(loss)}")
    if abs(loss - expected["loss"] * len(y)) < 1e-9:
        expect(False, "the loss is the sum over the batch: take the mean (divide by N)")
    expect(abs(loss - expected["loss"]) < 1e-9, f"loss {loss:.6f}, torch's F.cross_entropy says "
                                                f"{expected['loss']:.6f}: mean of (logsumexp(row) - row[true class])")
    if rel_err(grad, expected["dlogits"] * len(y)) < 1e-9:
        expect(False, "the gradient is N times too large: divide (softmax - onehot) by the batch size, "
                      "as the loss is a mean")
    expect(rel_err(grad, expected["dlogits"]) < 1e-9, "the gradient is not (softmax(logits) - onehot(y)) / N")


@exercise("p1-numpy.3")
def test_softmax_cross_entropy_survives_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 0.0]])
    with np.errstate(all="ignore"):
        loss, grad = numpy_net.softmax_cross_entropy(logits, np.array([0, 1]))
    expect(np.isfinite(loss) and np.all(np.isfinite(grad)),
           "logits of 1000 give inf or nan: exp overflows. Subtract each row's maximum before exp "
           "(softmax does not change when every logit of a row moves by the same amount)")
    expect(abs(loss) < 1e-9, f"both samples are classified with certainty, so the loss should be 0, got {loss}")


@wrong_answer("p1-numpy.3", diagnosis="Subtract each row's maximum")
def softmax_without_max_shift(logits, y):
    """The textbook formula as written: exp of the raw logits overflows at 710."""
    n = len(y)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    loss = float(np.mean(-np.log(probs[np.arange(n), y])))
    probs[np.arange(n), y] -= 1.0
    return loss, probs / n


@wrong_answer("p1-numpy.3", diagnosis="N times too large")
def softmax_gradient_not_divided(logits, y):
    """The loss is a mean, but its gradient is left as a sum."""
    n = len(y)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1))
    probs = np.exp(shifted - log_sum_exp[:, None])
    probs[np.arange(n), y] -= 1.0
    return float(np.mean(log_sum_exp - shifted[np.arange(n), y])), probs


# --------------------------------------------------------------------------- p1-numpy.4 backward


@exercise("p1-numpy.4")
def test_backward_matches_autograd():
    params, x, y = small_net(seed=3)
    expected = torch_reference(params, x, y)
    z1 = x @ params["W1"] + params["b1"]
    cache = {"x": x, "z1": z1, "h": np.maximum(z1, 0)}
    grads = numpy_net.backward(params, cache, expected["dlogits"])
    missing = [k for k in ("W1", "b1", "W2", "b2") if k not in grads]
    expect(not missing, f"backward returns no gradient for {', '.join(missing)}")
    for name in ("W1", "b1", "W2", "b2"):
        expect(np.shape(grads[name]) == np.shape(params[name]),
               f"d loss / d {name} has shape {np.shape(grads[name])}, but {name} is {np.shape(params[name])}: "
               "a gradient has its parameter's shape (check the transposes, and sum biases over the batch)")
    errors = {name: rel_err(grads[name], expected["grads"][name]) for name in grads}
    if errors["W2"] < 1e-9 and errors["b2"] < 1e-9 and errors["W1"] > 1e-6:
        expect(False, f"W1's gradient is off by {errors['W1']:.2f} while W2's is right: is the ReLU mask "
                      "(z1 > 0) applied to dh?")
    wrong = {k: f"{v:.2g}" for k, v in errors.items() if not v < 1e-9}
    expect(not wrong, f"relative error against torch autograd (float64) above 1e-9 for {wrong}: "
                      "work backwards from logits = h @ W2 + b2 through h = max(z1, 0) to z1 = x @ W1 + b1")


@wrong_answer("p1-numpy.4", diagnosis="is the ReLU mask")
def backward_without_relu_mask(params, cache, dlogits):
    """The ReLU is skipped on the way back: dz1 = dh, as if every unit had been active."""
    dh = dlogits @ params["W2"].T
    return {"W2": cache["h"].T @ dlogits, "b2": dlogits.sum(axis=0), "W1": cache["x"].T @ dh, "b1": dh.sum(axis=0)}


@wrong_answer("p1-numpy.4", diagnosis="sum biases over the batch")
def backward_bias_not_summed(params, cache, dlogits):
    """The bias gradient is left per sample, (N, 10), instead of summed over the batch."""
    dz1 = (dlogits @ params["W2"].T) * (cache["z1"] > 0)
    return {"W2": cache["h"].T @ dlogits, "b2": dlogits, "W1": cache["x"].T @ dz1, "b1": dz1.sum(axis=0)}


# --------------------------------------------------------------------------- p1-numpy.5 momentum


@exercise("p1-numpy.5")
def test_momentum_step_builds_velocity():
    params = {"w": np.array([1.0, -2.0]), "b": np.array([0.5])}
    grads = {"w": np.array([0.5, 1.0]), "b": np.array([-1.0])}
    velocity = {"w": np.array([0.2, 0.0]), "b": np.array([0.0])}
    result = numpy_net.momentum_step(params, grads, velocity, lr=0.1, momentum=0.9)
    expect(result is None or result is params,
           "momentum_step updates params and velocity in place (the training loop keeps using the same dicts)")
    # v = 0.9 * v - 0.1 * g ; w = w + v
    expect(np.allclose(velocity["w"], [0.9 * 0.2 - 0.05, -0.1]) and np.allclose(velocity["b"], [0.1]),
           f"velocity after one step is {velocity['w'].tolist()}, expected [0.13, -0.1]: "
           "v = momentum * v - lr * g (the old velocity decays, the gradient pushes against the slope)")
    if np.allclose(params["w"], [1.0 - 0.05, -2.0 - 0.1]):
        expect(False, "the weights moved by -lr * g only: add the velocity instead (w = w + v), "
                      "otherwise momentum does nothing")
    expect(np.allclose(params["w"], [1.13, -2.1]) and np.allclose(params["b"], [0.6]),
           f"weights after one step are {params['w'].tolist()}, expected [1.13, -2.1]: w = w + v, with the new v")


@exercise("p1-numpy.5")
def test_momentum_step_on_a_quadratic_converges():
    params, velocity = {"w": np.array([5.0])}, {"w": np.array([0.0])}
    for _ in range(200):
        numpy_net.momentum_step(params, {"w": 2 * params["w"]}, velocity, lr=0.05, momentum=0.9)
    expect(abs(params["w"][0]) < 1e-3, f"200 steps on f(w) = w^2 from w = 5 end at w = {params['w'][0]:.3g}, "
                                       "not at the minimum 0: is the velocity subtracting lr * g?")


@wrong_answer("p1-numpy.5", diagnosis="add the velocity instead")
def momentum_ignored(params, grads, velocity, *, lr, momentum):
    """The velocity is computed but the weights take a plain SGD step."""
    for k in params:
        velocity[k] = momentum * velocity[k] - lr * grads[k]
        params[k] -= lr * grads[k]


@wrong_answer("p1-numpy.5", diagnosis="v = momentum * v - lr * g")
def momentum_sign_flipped(params, grads, velocity, *, lr, momentum):
    """The gradient is added to the velocity: the weights climb the loss."""
    for k in params:
        velocity[k] = momentum * velocity[k] + lr * grads[k]
        params[k] += velocity[k]
