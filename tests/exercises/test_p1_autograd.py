"""Checks for p1-autograd's exercises (``make check M=p1-autograd``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
by torch autograd (float64), or by a tiny graph walk written in this file.
The code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ml60.grading import exercise, expect, wrong_answer
from phase1_foundation import p1_autograd


def call_or_diagnose(function, diagnosis: str, *args, **kwargs):
    """Call the code under test; a crash becomes a failed check that says why (a stub still reads 'not started')."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise
    except (RuntimeError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise AssertionError(f"{diagnosis} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc


# --------------------------------------------------------------------------- p1-autograd.1 walk the graph


def reference_nodes(root) -> dict[int, object]:
    """Every distinct grad_fn node reachable from ``root``, by id: the answer key for which nodes a walk must list."""
    found, stack = {}, [root]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in found:
            continue
        found[id(fn)] = fn
        stack.extend(child for child, _ in fn.next_functions)
    return found


def walk(root, names):
    nodes = call_or_diagnose(
        p1_autograd.walk_graph,
        "walk_graph crashed: a child in next_functions is None for an input that needs no gradient (x, or the "
        "constant 2); skip None before reading its name or next_functions", root, names)
    expect(isinstance(nodes, list) and all(isinstance(n, (tuple, list)) and len(n) == 2 for n in nodes),
           f"walk_graph should return a list of (depth, name) pairs, got {str(nodes)[:120]}")
    return [tuple(n) for n in nodes]


@exercise("p1-autograd.1")
def test_walk_of_a_chain_lists_every_node_at_its_depth():
    w = torch.randn(3, requires_grad=True)
    loss = (w * 2).exp().sum()
    expected, fn, depth = [], loss.grad_fn, 0
    while fn is not None:   # a chain: each node has exactly one child that is not None
        expected.append((depth, type(fn).__name__))
        fn, depth = next((c for c, _ in fn.next_functions if c is not None), None), depth + 1
    nodes = walk(loss.grad_fn, {id(w): "w"})
    expect(len(nodes) > 0 and nodes[0] == (0, expected[0][1]),
           f"the walk should start with the root (0, {expected[0][1]!r}), got {nodes[:1]}")
    expect(len(nodes) == len(expected),
           f"loss = (w * 2).exp().sum() has {len(expected)} nodes on its one path "
           f"({' -> '.join(n for _, n in expected)}), the walk lists {len(nodes)}: {nodes}; "
           "visit every child in fn.next_functions, recursively, down to the leaf")
    depths = [d for d, _ in nodes]
    expect(depths == [d for d, _ in expected], f"depths {depths}, expected {[d for d, _ in expected]}: the root "
                                               "is at depth 0 and each child is one level deeper than its parent")
    for (_, got), (_, want) in zip(nodes[:-1], expected[:-1]):
        expect(got == want, f"a node is listed as {got!r}, expected {want!r}: name it type(fn).__name__")
    leaf = nodes[-1][1]
    expect("AccumulateGrad" in leaf and "leaf w" in leaf,
           f"the last node is {leaf!r}: a leaf's node is AccumulateGrad, and its .variable is the tensor; label it "
           "'AccumulateGrad -> leaf w (3,)' with the name from names[id(fn.variable)]")


@exercise("p1-autograd.1")
def test_walk_reaches_both_leaves_and_every_node():
    torch.manual_seed(1)
    x = torch.randn(4, 3)
    w = torch.randn(3, 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    loss = ((x @ w + b).relu() ** 2).mean()
    nodes = walk(loss.grad_fn, {id(w): "w", id(b): "b"})
    names = [name for _, name in nodes]
    for label in ("w", "b"):
        expect(any(f"leaf {label}" in n for n in names),
               f"no entry names the leaf {label!r}: the walk lists {names}; a leaf's node is AccumulateGrad, "
               "its .variable is the tensor: label it with names[id(fn.variable)]")
    wanted = sorted(type(fn).__name__ for fn in reference_nodes(loss.grad_fn).values()
                    if type(fn).__name__ != "AccumulateGrad")
    got = sorted({n for n in names if "AccumulateGrad" not in n})
    expect(got == sorted(set(wanted)), f"the walk lists the operations {got}, the graph has {sorted(set(wanted))}")


@exercise("p1-autograd.1")
def test_walk_does_not_expand_a_shared_node_twice():
    a = torch.tensor([0.5], requires_grad=True)
    h = a.exp()
    for _ in range(12):
        h = h * h   # each MulBackward0 reaches the node below it twice: 2^12 paths, 14 nodes
    distinct = len(reference_nodes(h.grad_fn))
    nodes = walk(h.grad_fn, {id(a): "a"})
    expect(len(nodes) <= 2 * distinct + 2,
           f"{len(nodes)} entries for a graph of {distinct} distinct nodes: a node reached twice is expanded twice, "
           "which is exponential here; remember the nodes already visited (a set of id(fn)) and do not descend "
           "into them again")
    expect(any("leaf a" in n for _, n in nodes), "the walk never reaches the leaf a")


@wrong_answer("p1-autograd.1", diagnosis="skip None before reading")
def walk_without_skipping_none(root, names=None):
    """A None child (an input that needs no gradient) is visited like a node and crashes the walk."""
    names = names or {}
    lines, seen = [], set()

    def visit(fn, depth):
        name = type(fn).__name__
        if name == "AccumulateGrad":
            name = f"AccumulateGrad -> leaf {names.get(id(fn.variable), '')} {tuple(fn.variable.shape)}"
        lines.append((depth, name))
        if id(fn) in seen:
            return
        seen.add(id(fn))
        for child, _ in fn.next_functions:
            visit(child, depth + 1)

    visit(root, 0)
    return lines


@wrong_answer("p1-autograd.1", diagnosis="remember the nodes already visited")
def walk_without_visited_set(root, names=None):
    """No record of visited nodes: a subgraph reached along two paths is walked twice."""
    names = names or {}
    lines = []

    def visit(fn, depth):
        if fn is None:
            return
        name = type(fn).__name__
        if name == "AccumulateGrad":
            name = f"AccumulateGrad -> leaf {names.get(id(fn.variable), '')} {tuple(fn.variable.shape)}"
        lines.append((depth, name))
        for child, _ in fn.next_functions:
            visit(child, depth + 1)

    visit(root, 0)
    return lines


@wrong_answer("p1-autograd.1", diagnosis="label it")
def walk_without_leaf_labels(root, names=None):
    """Every node is listed by its type name: the leaves read 'AccumulateGrad', with no tensor named."""
    lines, seen = [], set()

    def visit(fn, depth):
        if fn is None:
            return
        lines.append((depth, type(fn).__name__))
        if id(fn) in seen:
            return
        seen.add(id(fn))
        for child, _ in fn.next_functions:
            visit(child, depth + 1)

    visit(root, 0)
    return lines


# --------------------------------------------------------------------------- p1-autograd.2 a gradient by hand


def relu_square_problem(seed: int = 0):
    """x (6, 4), w (4, 3), b (3,) in float64, and autograd's d loss / d w: the answer key."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64) * 0.5
    w_leaf = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((torch.relu(x @ w_leaf + b) ** 2).mean(), w_leaf)
    return x, w, b, grad


@exercise("p1-autograd.2")
def test_hand_gradient_matches_autograd():
    x, w, b, expected = relu_square_problem()
    z = x @ w + b
    expect(bool((z < 0).any() and (z > 0).any()), "test data should have both signs of z")
    got = call_or_diagnose(p1_autograd.hand_gradient_w,
                           "hand_gradient_w crashed on x (6, 4), w (4, 3), b (3,): d loss / d w = x.T @ dz, "
                           "(4, 6) @ (6, 3)", x, w, b)
    expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (4, 3),
           f"d loss / d w should have w's shape (4, 3), got {tuple(getattr(got, 'shape', ())) or type(got).__name__}: "
           "x.T @ dz, with dz shaped like z (6, 3)")
    got = got.detach().to(torch.float64)
    n_rows, n_entries = z.shape[0], z.numel()
    if torch.allclose(got, expected * n_entries / n_rows, rtol=1e-6):
        expect(False, f"the gradient is {n_entries // n_rows} times too large: the mean runs over all "
                      f"{n_entries} entries of z (N * K), not over the {n_rows} rows; divide by z.numel()")
    if torch.allclose(got, expected / 2, rtol=1e-6):
        expect(False, "the gradient is half of autograd's: the derivative of r ** 2 is 2 r")
    no_mask = x.T @ (2 * z) / n_entries
    if torch.allclose(got, no_mask, rtol=1e-6):
        expect(False, "the gradient uses 2 z where z < 0 too: ReLU passes no gradient where z <= 0, "
                      "so use 2 * relu(z) (negative pre-activations contribute nothing)")
    error = (got - expected).abs().max().item()
    expect(error < 1e-10, f"d loss / d w differs from autograd's by up to {error:.3g}: with z = x @ w + b, "
                          "d loss / d z = 2 relu(z) / z.numel(), and d loss / d w = x.T @ (d loss / d z)")


@wrong_answer("p1-autograd.2", diagnosis="not over the 6 rows")
def hand_gradient_mean_over_rows(x, w, b):
    """The mean is taken to be over the batch rows only, as in a per-sample loss."""
    z = x @ w + b
    return x.T @ (2 * z.relu()) / z.shape[0]


@wrong_answer("p1-autograd.2", diagnosis="negative pre-activations contribute nothing")
def hand_gradient_without_relu(x, w, b):
    """ReLU is forgotten on the way back: 2 z instead of 2 relu(z)."""
    z = x @ w + b
    return x.T @ (2 * z) / z.numel()


@wrong_answer("p1-autograd.2", diagnosis="the derivative of r ** 2 is 2 r")
def hand_gradient_without_factor_two(x, w, b):
    """The power rule's factor 2 is dropped."""
    z = x @ w + b
    return x.T @ z.relu() / z.numel()


# --------------------------------------------------------------------------- p1-autograd.3 accumulate gradients


class CountingLinear(torch.nn.Linear):
    """nn.Linear that records the batch size of every forward call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        return super().forward(x)


def accumulation_problem():
    """A float64 linear model with stale gradients in .grad, a batch of 12, and the answers for 4 chunks of 3."""
    torch.manual_seed(3)
    model = CountingLinear(5, 2).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    twin = copy.deepcopy(model)
    full_loss = F.mse_loss(twin(x), y)
    full = torch.autograd.grad(full_loss, list(twin.parameters()))
    last = torch.autograd.grad(F.mse_loss(twin(x[-3:]), y[-3:]), list(twin.parameters()))
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)   # left over from an earlier step
    return model, x, y, full_loss.item(), full, last


@exercise("p1-autograd.3")
def test_accumulated_gradient_equals_the_full_batch_gradient():
    model, x, y, full_loss, full, last = accumulation_problem()
    returned = call_or_diagnose(p1_autograd.accumulate_gradients,
                                "accumulate_gradients crashed on a batch of 12 in 4 micro-batches",
                                model, F.mse_loss, x, y, 4)
    expect(model.batch_sizes == [3, 3, 3, 3],
           f"the model saw batches of sizes {model.batch_sizes}; with 12 samples and micro_batches=4 it should run "
           "forward (and backward) once per chunk of 3: x.chunk(4), y.chunk(4)")
    grads = [p.grad for p in model.parameters()]
    expect(all(g is not None for g in grads), "a parameter's .grad is None: call backward() on each chunk's loss")
    weight, expected = grads[0].detach(), full[0]
    if torch.allclose(weight - 7.0, expected, atol=1e-10):
        expect(False, "the result is the right gradient plus the stale 7.0 that was in .grad before the call: "
                      "clear the gradients (model.zero_grad()) once, before the first micro-batch")
    if torch.allclose(weight, 4 * expected, atol=1e-10):
        expect(False, "the gradient is 4 times the full batch's: each chunk's loss is a mean over its own 3 "
                      "samples; divide it by micro_batches before backward()")
    if torch.allclose(weight, last[0] / 4, atol=1e-10) or torch.allclose(weight, last[0], atol=1e-10):
        expect(False, "only the last micro-batch's gradient survives: is zero_grad() called inside the loop? "
                      "Clear once before the loop and let backward() add the chunks up")
    for name, g, want in zip(("weight", "bias"), grads, full):
        error = (g.detach() - want).abs().max().item()
        expect(error < 1e-10, f"the accumulated {name} gradient differs from the full batch's by up to {error:.3g}: "
                              "zero_grad once, then backward() on loss / micro_batches for every chunk")
    expect(isinstance(returned, float) and not isinstance(returned, bool),
           f"accumulate_gradients returned {type(returned).__name__}, not a Python float: add up "
           "(loss / micro_batches).item(); a running total of loss tensors keeps every chunk's graph alive")
    expect(abs(returned - full_loss) < 1e-10, f"returned loss {returned:.6f}, the whole batch's mean loss is "
                                              f"{full_loss:.6f}: add up loss / micro_batches over the chunks")


@wrong_answer("p1-autograd.3", diagnosis="before the first micro-batch")
def accumulate_without_clearing(model, loss_fn, x, y, micro_batches):
    """The gradients are never cleared: the previous step's .grad is added into this one."""
    total = 0.0
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = loss_fn(model(x_part), y_part) / micro_batches
        loss.backward()
        total += loss.item()
    return total


@wrong_answer("p1-autograd.3", diagnosis="divide it by micro_batches")
def accumulate_without_scaling(model, loss_fn, x, y, micro_batches):
    """Each chunk's mean loss is back-propagated as it is: the gradient is micro_batches times too large."""
    model.zero_grad()
    total = 0.0
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = loss_fn(model(x_part), y_part)
        loss.backward()
        total += loss.item() / micro_batches
    return total


@wrong_answer("p1-autograd.3", diagnosis="is zero_grad() called inside the loop")
def accumulate_clearing_every_chunk(model, loss_fn, x, y, micro_batches):
    """zero_grad() inside the loop, as in an ordinary training step: each chunk wipes the one before."""
    total = 0.0
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        model.zero_grad()
        loss = loss_fn(model(x_part), y_part) / micro_batches
        loss.backward()
        total += loss.item()
    return total


@wrong_answer("p1-autograd.3", diagnosis="keeps every chunk's graph alive")
def accumulate_loss_tensors(model, loss_fn, x, y, micro_batches):
    """The running loss adds up tensors, not numbers: it drags every chunk's graph along."""
    model.zero_grad()
    total = 0.0
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = loss_fn(model(x_part), y_part) / micro_batches
        loss.backward()
        total = total + loss
    return total
