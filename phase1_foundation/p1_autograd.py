"""p1-autograd (days 4-7): tensors, devices, and how PyTorch computes gradients for you.

What to take from it:

1. **Tensors and devices**: a tensor is an n-dimensional array with a dtype
   and a device; ``.to(device)`` moves it; ``torch.from_numpy`` shares memory.
2. **The graph**: every operation on a tensor that requires grad records a
   node (``grad_fn``); ``backward()`` walks those nodes from the loss back to
   the leaves.  We print the walk and draw it, and check autograd's
   gradient against one derived by hand.
3. **.data vs .detach()**: both give a tensor outside the graph that shares
   storage.  Change it in place and ``.detach()`` makes ``backward()`` raise
   (the graph notices its saved value changed); ``.data`` lets it through and
   you get a silently wrong gradient.  Prefer ``.detach()``.
4. **Why zero_grad()**: ``backward()`` adds into ``.grad``; call it twice
   without clearing and the gradient doubles.  The same adding-up, used on
   purpose, is gradient accumulation: a big batch in micro-batches.
5. **no_grad / inference_mode**: turn graph recording off for evaluation;
   inference tensors cannot be fed back into autograd.

Every demonstration of PyTorch's behaviour is asserted, so the lesson fails
loudly if a future PyTorch changes it; what your own code computes (the walk,
the hand gradient, the accumulation) is recorded in ``metrics.json``, and
``check`` reports the demonstration it broke.

Run: ``make p1-autograd``.  Writes ``runs/p1-autograd/``: ``metrics.json``, ``graph.png``.
"""

from __future__ import annotations

import numpy as np
import torch

from common.device import resolve_device
from common.plots import save
from common.script import finish_run, milestone_parser, start_run

MILESTONE = "p1-autograd"


def claim(holds: bool, what: str) -> None:
    """Each demo ends by stating what it just showed; if PyTorch ever behaves otherwise, stop and say so.

    (Not ``assert``: ``python -O`` strips asserts, and a lesson that silently
    shows the opposite of its text is worse than one that stops.)
    """
    if not holds:
        raise RuntimeError(f"the demo expected {what}, and PyTorch behaved otherwise")


def tensors_and_devices(device: torch.device) -> dict:
    print("\n-- 1. Tensors and devices --")
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    print(f"x = {x.tolist()}  shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}")
    moved = x.to(device)
    print(f"x.to('{device}') lives on {moved.device}; operations need both operands on one device")
    array = np.zeros(3, dtype=np.float32)
    shared = torch.from_numpy(array)
    array[0] = 42.0
    print(f"torch.from_numpy shares memory: after changing the NumPy array, the tensor reads {shared.tolist()}")
    claim(shared[0].item() == 42.0, "torch.from_numpy to share the NumPy array's memory")
    return {"device": str(device), "from_numpy_shares_memory": bool(shared[0].item() == 42.0)}


def walk_graph(root, names: dict[int, str] | None = None) -> list[tuple[int, str]]:
    """Depth-first walk of the ``grad_fn`` graph from ``root`` (usually ``loss.grad_fn``): ``[(depth, name), ...]``.

    This is the path ``backward()`` takes.  Every node is a backward function
    (``MulBackward0``, ``MmBackward0``, ...); ``node.next_functions`` is a
    tuple of ``(child, index)`` pairs, one per input of the forward operation,
    where ``child`` is ``None`` for an input that needs no gradient (a data
    tensor like ``x``).  A leaf tensor that requires grad ends its path in an
    ``AccumulateGrad`` node, whose ``.variable`` is the leaf: its entry reads
    ``"AccumulateGrad -> leaf w (3, 2)"``, the label taken from ``names``
    (``id(tensor)`` -> label) and the shape from the tensor.

    The root is at depth 0 and each step to a child is one level deeper.  A
    node reached a second time (a tensor used twice) is listed again but not
    expanded again, so the walk stays as small as the graph.
    """
    # EXERCISE p1-autograd.1: walk the grad_fn graph
    # hint: recurse from the root through fn.next_functions: skip None children, name an AccumulateGrad node
    # hint: by its .variable, and never expand the same node (id(fn)) twice
    names = names or {}
    lines, seen = [], set()

    def visit(fn, depth):
        if fn is None:
            return
        name = type(fn).__name__
        if name == "AccumulateGrad":
            var = fn.variable
            name = f"AccumulateGrad -> leaf {names.get(id(var), '')} {tuple(var.shape)}"
        lines.append((depth, name))
        if id(fn) in seen:
            return
        seen.add(id(fn))
        for child, _ in fn.next_functions:
            visit(child, depth + 1)

    visit(root, 0)
    return lines
    # END EXERCISE


def hand_gradient_w(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d loss / d w for ``loss = mean(relu(x @ w + b) ** 2)``, derived by hand (no autograd).

    ``x`` is (N, D), ``w`` is (D, K), ``b`` is (K,); the answer has ``w``'s
    shape.  Write the forward pass as three lines (``z = x @ w + b``,
    ``r = relu(z)``, ``loss`` = the mean of ``r ** 2`` over all N * K entries)
    and apply the chain rule backwards, one line at a time, as p1-numpy's
    ``backward`` did.  The run compares your answer with the ``w.grad`` that
    ``loss.backward()`` leaves.
    """
    # EXERCISE p1-autograd.2: a gradient by hand
    # hint: go back one forward line at a time: the mean runs over all z.numel() entries, not the N rows,
    # hint: and ReLU lets no gradient through where z <= 0
    z = x @ w + b
    return x.T @ (2 * z.relu()) / z.numel()
    # END EXERCISE


def the_graph(run_dir) -> dict:
    print("\n-- 2. The computational graph: loss = ((x @ w + b).relu() ** 2).mean() --")
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    w = torch.randn(3, 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    loss = ((x @ w + b).relu() ** 2).mean()
    nodes = walk_graph(loss.grad_fn, {id(w): "w", id(b): "b"})
    for depth, name in nodes:
        print("  " + "   " * depth + name)
    reaches_leaves = any("leaf w" in name for _, name in nodes) and any("leaf b" in name for _, name in nodes)
    print("  (x is not in the walk: it does not require grad, so autograd keeps no path to it)")
    loss.backward()
    # Check autograd against the gradient derived by hand
    by_hand_w = hand_gradient_w(x, w.detach(), b.detach())
    matches = tuple(by_hand_w.shape) == tuple(w.shape) and torch.allclose(w.grad, by_hand_w, atol=1e-6)
    print(f"backward() filled w.grad {tuple(w.grad.shape)}; equal to hand_gradient_w's: {matches}")
    _draw_graph(nodes, run_dir / "graph.png")
    return {"nodes": [name for _, name in nodes], "leaf_count": sum("leaf" in n for _, n in nodes),
            "walk_reaches_both_leaves": reaches_leaves, "autograd_matches_hand_gradient": matches}


def data_versus_detach() -> dict:
    print("\n-- 3. .data versus .detach(): the same in-place change, two outcomes --")
    a = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    expected = torch.sigmoid(a.detach()) * (1 - torch.sigmoid(a.detach()))  # d sigmoid / da

    out = a.sigmoid()          # sigmoid's backward reuses its output, so autograd saves it
    out.detach().zero_()       # shares storage with out: the saved value is now wrong
    try:
        out.sum().backward()
        detach_error = None
    except RuntimeError as exc:
        detach_error = str(exc).splitlines()[0]
    print(f"via .detach(): backward() raises\n  RuntimeError: {detach_error[:110]}...")

    a.grad = None
    out = a.sigmoid()
    out.data.zero_()           # same change, but .data hides it from autograd's version counter
    out.sum().backward()
    silently_wrong = not torch.allclose(a.grad, expected)
    print(f"via .data:    backward() runs and gives {a.grad.tolist()}; the right answer is "
          f"{[round(v, 4) for v in expected.tolist()]}. Silently wrong: {silently_wrong}")
    claim(detach_error is not None and "modified by an inplace operation" in detach_error,
          "an in-place change after .detach() to be caught by backward()")
    claim(silently_wrong and bool(torch.all(a.grad == 0)), "the same change through .data to give a silently wrong gradient")
    return {"detach_raises": detach_error is not None, "detach_error": detach_error,
            "data_gradient": a.grad.tolist(), "correct_gradient": expected.tolist(),
            "data_gives_silently_wrong_gradient": silently_wrong}


def accumulate_gradients(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                         micro_batches: int) -> float:
    """Fill every parameter's ``.grad`` with the gradient of ``loss_fn(model(x), y)``, one micro-batch at a time.

    ``backward()`` adds into ``.grad`` rather than overwriting it.  Usually
    that is the bug ``zero_grad()`` prevents; here it is the tool: a batch too
    big for memory is split into ``micro_batches`` equal chunks, each chunk
    runs forward and backward on its own, and the gradients add up in
    ``.grad``.  Clear ``.grad`` once, before the first chunk (whatever is
    there belongs to an earlier step).  ``loss_fn`` is a mean over its batch,
    so each chunk's loss is divided by the number of chunks: the sum of the
    chunks' gradients is then the gradient of the mean over the whole batch.

    Returns the whole batch's loss as a Python number, for logging.  Sum
    ``loss.item()`` (or detached values), not the loss tensors themselves: a
    running total of tensors keeps every chunk's graph alive.
    ``len(x)`` is a multiple of ``micro_batches``.
    """
    # EXERCISE p1-autograd.3: accumulate gradients over micro-batches
    # hint: clear the gradients once, before the loop (not per chunk); backward() each chunk's loss divided by
    # hint: micro_batches; add up .item() values, not loss tensors
    model.zero_grad()
    total = 0.0
    for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = loss_fn(model(x_part), y_part) / micro_batches
        loss.backward()
        total += loss.item()
    return total
    # END EXERCISE


def why_zero_grad() -> dict:
    print("\n-- 4. Why zero_grad(): gradients accumulate --")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def loss():
        return torch.nn.functional.mse_loss(model(x), y)

    full_loss = loss()
    full_loss.backward()
    once = model.weight.grad.clone()
    loss().backward()          # no zero_grad in between
    twice = model.weight.grad.clone()
    print(f"grad after one backward:  {once.flatten().tolist()}")
    print(f"grad after two backwards: {twice.flatten().tolist()}  (exactly double)")
    chunked_loss = accumulate_gradients(model, torch.nn.functional.mse_loss, x, y, micro_batches=4)
    accumulated = model.weight.grad.clone()
    accumulation_matches = (tuple(accumulated.shape) == tuple(once.shape)
                            and torch.allclose(accumulated, once, atol=1e-6)
                            and isinstance(chunked_loss, (int, float)) and abs(chunked_loss - full_loss.item()) < 1e-5)
    print(f"4 micro-batches of 2, each loss / 4, accumulated: {accumulated.flatten().tolist()}  "
          f"(the full batch's gradient: {accumulation_matches})")
    model.zero_grad()
    print(f"after zero_grad():        {model.weight.grad}  (None: set_to_none is the default)")
    doubled = torch.allclose(twice, 2 * once)
    claim(doubled and model.weight.grad is None, "two backward() calls to add up, and zero_grad() to reset .grad to None")
    return {"doubles_without_zero_grad": doubled, "grad_once": once.flatten().tolist(),
            "grad_twice": twice.flatten().tolist(), "accumulation_matches_full_batch": accumulation_matches}


def no_grad_and_inference_mode() -> dict:
    print("\n-- 5. no_grad and inference_mode: evaluation without a graph --")
    w = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        y = w * 2
    print(f"under no_grad: y.requires_grad = {y.requires_grad}, y.grad_fn = {y.grad_fn}")
    with torch.inference_mode():
        z = w * 2
    print(f"under inference_mode: z.is_inference() = {z.is_inference()}")
    try:
        (z * w).sum().backward()
        inference_error = None
    except RuntimeError as exc:
        inference_error = str(exc).splitlines()[0]
    print(f"feeding an inference tensor back into autograd raises:\n  RuntimeError: {inference_error[:110]}")
    claim(not y.requires_grad and z.is_inference() and inference_error is not None,
          "no_grad and inference_mode to record no graph, and an inference tensor to be refused by autograd")
    return {"no_grad_records_nothing": not y.requires_grad, "inference_tensor": z.is_inference(),
            "inference_tensor_in_autograd_raises": inference_error is not None}


def _draw_graph(nodes: list[tuple[int, str]], path) -> None:
    """Draw the walk as boxes by depth: the loss on top, the leaves at the bottom."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.55 * len(nodes) + 1))
    positions = {}
    for row, (depth, name) in enumerate(nodes):
        x, y = depth, -row
        positions[row] = (x, y)
        color = "#cde6c8" if "leaf" in name else "#dde3f5"
        ax.text(x, y, name, ha="left", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.3", facecolor=color, edgecolor="#667"))
        parent = next((r for r in range(row - 1, -1, -1) if nodes[r][0] == depth - 1), None)
        if parent is not None:
            px, py = positions[parent]
            ax.annotate("", xy=(x - 0.05, y), xytext=(px + 0.1, py - 0.25),
                        arrowprops=dict(arrowstyle="->", color="#667"))
    ax.set_xlim(-0.3, max((d for d, _ in nodes), default=0) + 3.5)
    ax.set_ylim(-len(nodes), 1)
    ax.axis("off")
    ax.set_title("backward() walks grad_fn from the loss (top) to the leaves (green)")
    save(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    results = {
        "tensors": tensors_and_devices(resolve_device(args.device)),
        "graph": the_graph(run_dir),
        "data_vs_detach": data_versus_detach(),
        "zero_grad": why_zero_grad(),
        "no_grad": no_grad_and_inference_mode(),
    }
    passed = sum(_all_true(v) for v in results.values())
    print(f"\nResult: {passed}/{len(results)} demonstrations behaved as described.")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "demonstrations_passed", "value": passed,
                                  "display": f"{passed}/{len(results)} autograd demonstrations hold"},
                      demonstrations=results, demonstrations_passed=passed, demonstrations_total=len(results))


def _all_true(section: dict) -> bool:
    flags = [v for k, v in section.items() if isinstance(v, bool)]
    return bool(flags) and all(flags)


def check(metrics: dict) -> list[str]:
    """Problems with a p1-autograd run; empty when every demonstration held."""
    problems = [f"demonstration '{name}' did not behave as described"
                for name, section in metrics.get("demonstrations", {}).items() if not _all_true(section)]
    if metrics.get("demonstrations_total", 0) < 5:
        problems.append("fewer than 5 demonstrations recorded")
    return problems


if __name__ == "__main__":
    main()
