"""Checks for p1-manual's exercises (``make check M=p1-manual``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
with ``F.linear`` and ``F.relu`` on the same weights, and torch autograd on
tensors of the check's own.  The code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml60.grading import exercise, expect, wrong_answer
from phase1_foundation import models


def call_or_diagnose(function, diagnosis: str, *args, **kwargs):
    """Call the code under test; a crash becomes a failed check that says why (a stub still reads 'not started')."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise
    except (RuntimeError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise AssertionError(f"{diagnosis} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc


def reference_forward(x, w1, b1, w2, b2, *, relu=True):
    """784 -> hidden -> ReLU -> 10 with torch's own functional layers: the answer key."""
    hidden = F.linear(x.reshape(len(x), -1), w1, b1)
    return F.linear(F.relu(hidden) if relu else hidden, w2, b2)


def max_gap(a, b) -> float:
    return (a.detach() - b.detach()).abs().max().item()


# --------------------------------------------------------------------------- p1-manual.1 SimpleNet.forward


@exercise("p1-manual.1")
def test_simple_net_forward_matches_functional_layers():
    torch.manual_seed(0)
    net = models.SimpleNet(hidden=16).double()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    logits = call_or_diagnose(net, "net(x) crashed on a batch of 5 images (5, 1, 28, 28): flatten each image to 784 "
                                   "numbers and keep the batch axis, x.view(x.size(0), -1), before fc1", x)
    expect(isinstance(logits, torch.Tensor) and tuple(logits.shape) == (5, 10),
           f"a batch of 5 images should give logits (5, 10), got {tuple(getattr(logits, 'shape', ())) or logits!r}: "
           "flatten each image (keep the batch axis), fc1, ReLU, fc2")
    params = (net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias)
    expected = reference_forward(x, *params)
    if max_gap(logits, torch.softmax(expected, dim=1)) < 1e-9:
        expect(False, "net(x) returns probabilities (rows sum to 1): return the logits; F.cross_entropy applies "
                      "log-softmax itself, so a softmax in forward is applied twice")
    if max_gap(logits, reference_forward(x, *params, relu=False)) < 1e-9:
        expect(False, "the output equals fc2(fc1(x)) with no non-linearity: apply F.relu between fc1 and fc2")
    gap = max_gap(logits, expected)
    expect(gap < 1e-9, f"logits differ from fc2(relu(fc1(flatten(x)))) by up to {gap:.3g}")


@exercise("p1-manual.1")
def test_simple_net_forward_on_one_image_and_backward():
    torch.manual_seed(1)
    net = models.SimpleNet(hidden=8)
    x = torch.randn(1, 1, 28, 28)
    logits = call_or_diagnose(net, "net(x) crashed on a batch of one image (1, 1, 28, 28): flatten with "
                                   "x.view(x.size(0), -1), which keeps the batch axis", x)
    expect(tuple(logits.shape) == (1, 10), f"one image should give logits (1, 10), got {tuple(logits.shape)}: "
                                           "keep the batch axis when flattening")
    logits.sum().backward()
    expect(net.fc1.weight.grad is not None and net.fc1.weight.grad.abs().sum() > 0,
           "backward() leaves fc1.weight without a gradient: use self.fc1 and self.fc2 (the module's own layers)")


@wrong_answer("p1-manual.1", diagnosis="apply F.relu between fc1 and fc2")
def forward_without_relu(self, x):
    """No ReLU: two linear layers collapse into one linear map."""
    return self.fc2(self.fc1(x.view(x.size(0), -1)))


@wrong_answer("p1-manual.1", diagnosis="a softmax in forward is applied twice")
def forward_with_softmax(self, x):
    """Softmax at the end, before a loss (cross_entropy) that applies it again."""
    return F.softmax(self.fc2(F.relu(self.fc1(x.view(x.size(0), -1)))), dim=1)


@wrong_answer("p1-manual.1", diagnosis="keep the batch axis")
def forward_flattening_the_batch(self, x):
    """x.flatten() puts the whole batch into one long vector."""
    return self.fc2(F.relu(self.fc1(x.flatten())))


# --------------------------------------------------------------------------- p1-manual.2 RawTwoLayerNet.__call__


def small_raw_weights(seed: int = 0):
    """w1 (7, 12), b1 (7,), w2 (3, 7), b2 (3,): nn.Linear's (out, in) layout, nothing square."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(7, 12, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64),
            torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64))


@exercise("p1-manual.2")
def test_raw_forward_matches_linear_layers_and_reaches_the_parameters():
    weights = small_raw_weights()
    raw = models.RawTwoLayerNet(*weights)
    x = torch.randn(5, 1, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = call_or_diagnose(raw, "raw(x) crashed on x (5, 1, 3, 4) with w1 (7, 12), w2 (3, 7): flatten each sample "
                                "(x.view(x.size(0), -1) gives (5, 12)); nn.Linear's layout is W (out_features, "
                                "in_features), so a layer is x @ W.T + b", x)
    expect(isinstance(out, torch.Tensor) and tuple(out.shape) == (5, 3),
           f"5 samples and 3 outputs should give (5, 3), got {tuple(getattr(out, 'shape', ())) or out!r}")
    expected = reference_forward(x, *weights)
    if max_gap(out, reference_forward(x, *weights, relu=False)) < 1e-9:
        expect(False, "the output is two affine maps with nothing between them: apply ReLU to the hidden layer "
                      "(.clamp(min=0) or torch.relu)")
    gap = max_gap(out, expected)
    expect(gap < 1e-9, f"outputs differ from F.linear(relu(F.linear(x, w1, b1)), w2, b2) by up to {gap:.3g}: "
                       "hidden = relu(x @ w1.T + b1), out = hidden @ w2.T + b2")
    expect(out.requires_grad, "the output does not require grad, so backward() can reach no parameter: compute it "
                              "from self.params themselves, not from .data or .detach() copies")
    leaves = [w.clone().requires_grad_(True) for w in weights]
    expected_grads = torch.autograd.grad((reference_forward(x, *leaves) ** 2).sum(), leaves)
    (out ** 2).sum().backward()
    for name, p, want in zip(("w1", "b1", "w2", "b2"), raw.params, expected_grads):
        expect(p.grad is not None, f"after backward() {name}.grad is None: the output must be computed from "
                                   "self.params themselves, not from .data or .detach() copies")
        gap = max_gap(p.grad, want)
        expect(gap < 1e-9, f"{name}.grad differs from autograd on the reference forward by up to {gap:.3g}")


@wrong_answer("p1-manual.2", diagnosis="a layer is x @ W.T + b")
def raw_forward_without_transpose(self, x):
    """The weight is used as (in, out), but nn.Linear's layout is (out, in): x @ w1 does not fit."""
    w1, b1, w2, b2 = self.params
    return (x.view(x.size(0), -1) @ w1 + b1).clamp(min=0) @ w2 + b2


@wrong_answer("p1-manual.2", diagnosis="apply ReLU to the hidden layer")
def raw_forward_without_relu(self, x):
    """The ReLU is left out."""
    w1, b1, w2, b2 = self.params
    return (x.view(x.size(0), -1) @ w1.T + b1) @ w2.T + b2


@wrong_answer("p1-manual.2", diagnosis="not from .data or .detach() copies")
def raw_forward_on_detached_weights(self, x):
    """The forward pass reads p.data: the numbers are right, but autograd never sees the parameters."""
    w1, b1, w2, b2 = (p.data for p in self.params)
    return (x.view(x.size(0), -1) @ w1.T + b1).clamp(min=0) @ w2.T + b2


# --------------------------------------------------------------------------- p1-manual.3 RawTwoLayerNet.sgd_step


def sgd_step(raw, lr):
    return call_or_diagnose(raw.sgd_step, "sgd_step crashed: an in-place update of a leaf that requires grad must "
                                          "not be recorded by autograd; wrap the update in torch.no_grad()", lr)


def check_forward(params, x):
    """The check's own forward pass on the raw parameters (not the tree's __call__, which may be a stub)."""
    return reference_forward(x, *params)


@exercise("p1-manual.3")
def test_sgd_step_moves_against_the_gradient_and_clears_it():
    raw = models.RawTwoLayerNet(*small_raw_weights(2))
    before = [p.detach().clone() for p in raw.params]
    grads = [torch.randn_like(p) for p in raw.params]
    for p, g in zip(raw.params, grads):
        p.grad = g.clone()
    sgd_step(raw, 0.5)
    expect(len(raw.params) == 4, f"raw.params should still hold 4 tensors, it holds {len(raw.params)}")
    for name, p, w, g in zip(("w1", "b1", "w2", "b2"), raw.params, before, grads):
        expect(p.is_leaf and p.requires_grad,
               f"after the step {name} is no longer a leaf that requires grad (is_leaf={p.is_leaf}, "
               f"requires_grad={p.requires_grad}): it stopped being a parameter, and the next backward() will not "
               "fill its .grad; update in place (p -= lr * p.grad) inside torch.no_grad()")
        if max_gap(p, w + 0.5 * g) < 1e-12:
            expect(False, f"{name} moved up the gradient (w + lr * g): SGD steps downhill, w - lr * g")
        gap = max_gap(p, w - 0.5 * g)
        expect(gap < 1e-12, f"{name} after one step differs from w - lr * grad by up to {gap:.3g}")
        expect(p.grad is None or not p.grad.any(),
               f"{name}.grad still holds the gradient after the step: clear it (p.grad = None) after the update, "
               "or the next backward() adds into it")


@exercise("p1-manual.3")
def test_two_training_steps_match_plain_sgd():
    weights = small_raw_weights(3)
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 12, dtype=torch.float64, generator=g), torch.randint(0, 3, (6,), generator=g))
               for _ in range(2)]
    expected = [w.clone() for w in weights]   # plain SGD, written out in the check
    for x, y in batches:
        leaves = [w.clone().requires_grad_(True) for w in expected]
        step_grads = torch.autograd.grad(F.cross_entropy(check_forward(leaves, x), y), leaves)
        expected = [w - 0.3 * gw for w, gw in zip(expected, step_grads)]
    raw = models.RawTwoLayerNet(*weights)
    for x, y in batches:
        F.cross_entropy(check_forward(raw.params, x), y).backward()
        grads_present = [p.is_leaf and p.grad is not None for p in raw.params]
        expect(all(grads_present), f"backward() left a parameter's .grad empty ({grads_present}): after a step the "
                                   "parameters must still be leaves that require grad; update them in place "
                                   "under torch.no_grad()")
        sgd_step(raw, 0.3)
    gap = max(max_gap(p, w) for p, w in zip(raw.params, expected))
    expect(gap < 1e-10, f"after two steps the weights differ from plain SGD by up to {gap:.3g}: was the previous "
                        "step's gradient added into the second? Clear p.grad after every update")


@wrong_answer("p1-manual.3", diagnosis="wrap the update in torch.no_grad()")
def sgd_step_without_no_grad(self, lr):
    """The in-place update runs with autograd recording: PyTorch refuses to change a leaf that requires grad."""
    for p in self.params:
        p -= lr * p.grad
        p.grad = None


@wrong_answer("p1-manual.3", diagnosis="it stopped being a parameter")
def sgd_step_out_of_place(self, lr):
    """w = w - lr * g outside no_grad: new tensors that are part of the graph, not leaves."""
    self.params = [p - lr * p.grad for p in self.params]


@wrong_answer("p1-manual.3", diagnosis="Clear p.grad after every update")
def sgd_step_without_clearing(self, lr):
    """The gradient is never cleared: each step uses the sum of every batch's gradient so far."""
    with torch.no_grad():
        for p in self.params:
            p -= lr * p.grad


@wrong_answer("p1-manual.3", diagnosis="SGD steps downhill")
def sgd_step_uphill(self, lr):
    """The sign is flipped: the step climbs the loss."""
    with torch.no_grad():
        for p in self.params:
            p += lr * p.grad
            p.grad = None
