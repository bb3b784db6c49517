"""A 784-128-10 network in NumPy alone: forward, softmax cross-entropy, backward by hand.

The whole network is three lines of algebra::

    z1 = x @ W1 + b1        (N, 128)   affine
    h  = max(z1, 0)         (N, 128)   ReLU
    z2 = h @ W2 + b2        (N, 10)    affine: the logits

and the loss is the mean softmax cross-entropy of the logits against the
labels.  The backward pass applies the chain rule to those lines in reverse.
Each gradient below has a one-line derivation in its comment; the tests check
every one of them against a float64 centred difference and against torch
autograd.
"""

from __future__ import annotations

import numpy as np

PARAM_NAMES = ("W1", "b1", "W2", "b2")


def init_params(n_in: int = 784, n_hidden: int = 128, n_out: int = 10, *, rng: np.random.Generator,
                dtype=np.float32) -> dict[str, np.ndarray]:
    """He initialisation: weights ~ N(0, 2 / fan_in), so ReLU activations keep their scale."""
    return {
        "W1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2.0 / n_in)).astype(dtype),
        "b1": np.zeros(n_hidden, dtype=dtype),
        "W2": (rng.standard_normal((n_hidden, n_out)) * np.sqrt(2.0 / n_hidden)).astype(dtype),
        "b2": np.zeros(n_out, dtype=dtype),
    }


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits for a batch ``x`` of shape (N, 784), plus what backward needs."""
    # EXERCISE p1-numpy.2: the forward pass
    # hint: three lines: an affine map, ReLU (np.maximum), another affine map; keep x, z1 and h for backward
    z1 = x @ params["W1"] + params["b1"]
    h = np.maximum(z1, 0)
    logits = h @ params["W2"] + params["b2"]
    return logits, {"x": x, "z1": z1, "h": h}
    # END EXERCISE


def softmax_cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and its gradient with respect to the logits.

    Subtracting the row maximum before ``exp`` changes nothing mathematically
    (softmax is shift-invariant) but keeps ``exp`` from overflowing.
    d(loss)/d(logits) = (softmax(logits) - onehot(y)) / N.
    """
    # EXERCISE p1-numpy.3: softmax cross-entropy and its gradient
    # hint: subtract each row's maximum before exp; loss = mean(logsumexp - logit of the true class);
    # hint: the gradient is (softmax - onehot(y)) / N
    n = len(y)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_sum_exp - shifted[np.arange(n), y]))
    probs = np.exp(shifted - log_sum_exp[:, None])
    grad = probs
    grad[np.arange(n), y] -= 1.0
    return loss, grad / n
    # END EXERCISE


def backward(params: dict[str, np.ndarray], cache: dict, dlogits: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of the loss for every parameter, given d(loss)/d(logits)."""
    # EXERCISE p1-numpy.4: the backward pass
    # hint: walk the forward lines in reverse: dW2 = h^T dlogits, db2 = column sums, dh = dlogits W2^T,
    # hint: ReLU lets the gradient through only where z1 > 0, then the same two rules give dW1 and db1
    x, z1, h = cache["x"], cache["z1"], cache["h"]
    grads = {
        "W2": h.T @ dlogits,            # logits = h @ W2 + b2  ->  dW2 = h^T dlogits
        "b2": dlogits.sum(axis=0),      # b2 is added to every row -> sum over rows
    }
    dh = dlogits @ params["W2"].T       # dh = dlogits W2^T
    dz1 = dh * (z1 > 0)                 # ReLU passes gradient only where its input was positive
    grads["W1"] = x.T @ dz1             # z1 = x @ W1 + b1  ->  dW1 = x^T dz1
    grads["b1"] = dz1.sum(axis=0)
    return grads
    # END EXERCISE


def momentum_step(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], velocity: dict[str, np.ndarray], *,
                  lr: float, momentum: float) -> None:
    """One step of SGD with momentum, in place: ``v = momentum * v - lr * g``, then ``w = w + v``.

    The velocity is a running sum of past steps that decays by ``momentum``
    each time: directions the gradient keeps pointing in build up speed, and
    directions where it flips sign cancel out.
    """
    # EXERCISE p1-numpy.5: the momentum update
    # hint: for every parameter name: update velocity[k] first, then add it to params[k]; both in place
    for k in params:
        velocity[k] = momentum * velocity[k] - lr * grads[k]
        params[k] += velocity[k]
    # END EXERCISE


def loss_and_grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    logits, cache = forward(params, x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    return loss, backward(params, cache, dlogits)


def predict(params: dict[str, np.ndarray], x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    return np.concatenate([forward(params, x[i:i + batch_size])[0].argmax(axis=1)
                           for i in range(0, len(x), batch_size)])


# --------------------------------------------------------------------------- gradient checks


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / (||a|| + ||b||): scale-free, 0 when both are exactly 0.

    Norm-wise rather than entry by entry: an entry whose true gradient is
    1e-15 carries no information, and dividing by it would only amplify
    rounding noise.
    """
    denominator = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / denominator) if denominator > 0 else 0.0


def numerical_gradient_check(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, *,
                             samples_per_param: int = 25, eps: float = 1e-6,
                             rng: np.random.Generator, dtype=np.float64) -> dict[str, float]:
    """Compare backward() with a centred difference at random coordinates, in float64 unless told otherwise.

    (f(w + eps) - f(w - eps)) / (2 eps) has error O(eps^2); in float64 with
    eps = 1e-6 that leaves relative errors around 1e-9 for a correct gradient,
    and around 1e-2 or worse for a wrong one.  The check runs in float64
    because float32's 7 digits would swamp the difference quotient: with
    ``dtype=np.float32`` the loss moves by eps x gradient, about 1e-7, which
    is below float32's resolution of a loss near 2.3 (2.4e-7), so the same
    correct gradient shows errors of tens of percent, as large as a broken
    backward's.
    """
    cast = {k: v.astype(dtype) for k, v in params.items()}   # copies: the caller's arrays are not touched
    xs = x.astype(dtype)
    _, analytic = loss_and_grads(cast, xs, y)
    errors = {}
    for name in PARAM_NAMES:
        flat = cast[name].reshape(-1)  # a view: writing into it changes cast[name]
        coords = rng.choice(flat.size, size=min(samples_per_param, flat.size), replace=False)
        numeric = np.empty(len(coords))
        for i, c in enumerate(coords):
            original = flat[c]
            flat[c] = original + eps
            plus, _ = loss_and_grads(cast, xs, y)
            flat[c] = original - eps
            minus, _ = loss_and_grads(cast, xs, y)
            flat[c] = original
            numeric[i] = (plus - minus) / (2 * eps)
        errors[name] = relative_error(analytic[name].reshape(-1)[coords], numeric)
    return errors


def torch_gradient_check(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Compare backward() with torch autograd on the same float64 network."""
    import torch
    import torch.nn.functional as F

    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    _, ours = loss_and_grads(p64, x.astype(np.float64), y)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p64.items()}
    xt = torch.tensor(x, dtype=torch.float64)
    logits = torch.relu(xt @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"]
    F.cross_entropy(logits, torch.tensor(y)).backward()
    return {k: relative_error(ours[k], t[k].grad.numpy()) for k in PARAM_NAMES}
