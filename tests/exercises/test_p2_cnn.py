"""Checks for p2-cnn's exercises (``make check M=p2-cnn``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
the forward pass against a reference written out below over layers the
check builds itself, the schedules against hand-worked numbers, the
parameter groups against the shapes of a small model's parameters, one Adam
step against hand-worked numbers and five against ``torch.optim.Adam``.  The
code under test may be a learner's, or a stub.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ml60.grading import exercise, expect, wrong_answer
from phase2_depth import models, p2_cnn, under_the_hood

# --------------------------------------------------------------------------- p2-cnn.1 the convolution block


def block(c_in: int = 3, c_out: int = 32) -> nn.Module:
    torch.manual_seed(0)
    layer = models.conv_bn_relu(c_in, c_out)
    expect(isinstance(layer, nn.Module), f"conv_bn_relu should return an nn.Module (an nn.Sequential of the "
                                         f"three layers), got {type(layer).__name__}")
    return layer


@exercise("p2-cnn.1")
def test_block_keeps_the_size_and_ends_with_relu():
    layer = block(3, 8).train()
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    out = layer(x)
    expect(tuple(out.shape) == (4, 8, 10, 10),
           f"(4, 3, 10, 10) in should give (4, 8, 10, 10) out, got {tuple(out.shape)}: a 3x3 convolution with "
           "padding=1 keeps H x W, and its output channels are c_out")
    expect(bool((out >= 0).all()), f"the block's outputs go down to {out.min().item():.3f}: ReLU comes last, "
                                   "after BatchNorm, so nothing negative leaves the block")
    zeros = (out == 0).float().mean().item()
    expect(0.2 < zeros < 0.8, f"{100 * zeros:.0f}% of the outputs are 0; after BatchNorm centres each channel, "
                              "ReLU should zero about half")


@exercise("p2-cnn.1")
def test_block_normalises_each_channel():
    layer = block(3, 8).train()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    small, large = layer(x), layer(10 * x)
    expect(tuple(small.shape)[:2] == (8, 8), f"expected 8 output channels, got shape {tuple(small.shape)}")
    ratio = (large.norm() / small.norm().clamp_min(1e-12)).item()
    expect(abs(ratio - 1) < 1e-2, f"scaling the input by 10 scaled the output by {ratio:.2f}: in training mode "
                                  "BatchNorm2d after the convolution normalises each channel with the batch's "
                                  "own mean and std, so the scale of the input should not matter")


@exercise("p2-cnn.1")
def test_block_sees_a_3x3_neighbourhood():
    layer = block(2, 32).eval()
    x = torch.randn(1, 2, 9, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = layer(x)
        x[0, :, 4, 4] += 5.0
        changed = (layer(x) - before).abs().amax(dim=(0, 1)) > 1e-6
    expect(tuple(changed.shape) == (9, 9), f"expected a 9 x 9 output for a 9 x 9 input, got {tuple(changed.shape)}: "
                                           "padding=1")
    rows, cols = changed.nonzero(as_tuple=True)
    seen = (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) if len(rows) else None
    what = f"rows {seen[0]}..{seen[1]} and columns {seen[2]}..{seen[3]}" if seen else "nothing"
    expect(seen == (3, 5, 3, 5), f"changing input pixel (4, 4) changed output {what}, expected rows 3..5 and "
                                 "columns 3..5: a 3x3 kernel sees one pixel around each position")


@wrong_answer("p2-cnn.1", diagnosis="BatchNorm2d after the convolution")
def block_without_batchnorm(c_in, c_out):
    """Convolution and ReLU only: activations grow and shrink with the input, and a high lr diverges."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


@wrong_answer("p2-cnn.1", diagnosis="padding=1 keeps H x W")
def block_without_padding(c_in, c_out):
    """No padding: every block trims a pixel from each border."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


@wrong_answer("p2-cnn.1", diagnosis="ReLU comes last")
def block_relu_before_batchnorm(c_in, c_out):
    """ReLU before BatchNorm: the block hands on negative, re-centred values."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(), nn.BatchNorm2d(c_out))


# --------------------------------------------------------------------------- p2-cnn.2 the forward pass

WIDTHS = (4, 6, 8, 8, 12)


def check_block(c_in: int, c_out: int) -> nn.Sequential:
    """The check's own conv block, so that these checks do not depend on p2-cnn.1."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def hand_built_cnn(pool_first: bool, dropout: float = 0.0, num_classes: int = 5, seed: int = 0):
    """A FiveLayerCNN whose layers are set here (its __init__ is not used), in eval mode."""
    torch.manual_seed(seed)
    model = models.FiveLayerCNN.__new__(models.FiveLayerCNN)
    nn.Module.__init__(model)
    widths = (3, *WIDTHS)
    model.widths, model.pool_first = WIDTHS, pool_first
    for i in range(5):
        setattr(model, f"conv{i + 1}", check_block(widths[i], widths[i + 1]))
    model.pool = nn.MaxPool2d(2)
    model.dropout = nn.Dropout(dropout)
    model.classifier = nn.Linear(WIDTHS[-1], num_classes)
    for module in model.modules():      # BatchNorm statistics that are not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def reference_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The diagram of phase2_depth/models.py, written out."""
    x = model.conv1(x)
    if model.pool_first:
        x = F.max_pool2d(x, 2)
    x = F.max_pool2d(model.conv2(x), 2)
    x = model.conv3(x)
    x = F.max_pool2d(model.conv4(x), 2)
    x = F.max_pool2d(model.conv5(x), 2)
    return model.classifier(model.dropout(x.amax(dim=(2, 3))))


def images(n: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    expect(isinstance(out, torch.Tensor) and tuple(out.shape) == (len(x), 5),
           f"{len(x)} images and 5 classes should give logits of shape ({len(x)}, 5), got "
           f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}: after conv5's pool, "
           "take the maximum over H and W (torch.amax(x, dim=(2, 3))) before the classifier")
    return out


@exercise("p2-cnn.2")
def test_forward_gives_the_logits_of_the_diagram():
    x = images(n=4, size=16)
    for pool_first in (False, True):
        model = hand_built_cnn(pool_first)
        with torch.no_grad():
            out, expected = logits_of(model, x), reference_logits(model, x)
        sums = out.sum(dim=1)
        expect(not (bool((out >= 0).all()) and torch.allclose(sums, torch.ones_like(sums), atol=1e-5)),
               "every row of the output is non-negative and sums to 1: that is softmax at the end. Return the "
               "raw logits: nn.CrossEntropyLoss applies log-softmax itself, and softmax twice flattens the loss")
        error = (out - expected).abs().max().item()
        expect(error < 1e-5, f"with pool_first={pool_first} the logits differ from the diagram's by up to "
                             f"{error:.3g}: conv1{' + pool' if pool_first else ''}, conv2 + pool, conv3, "
                             "conv4 + pool, conv5 + pool, global max over H and W, dropout, classifier"
                             + (" (pool after conv1 only when self.pool_first)" if pool_first else ""))


@exercise("p2-cnn.2")
def test_forward_uses_dropout_in_training_only():
    x = images(n=4, size=16, seed=2)
    model = hand_built_cnn(pool_first=False, dropout=0.5)
    with torch.no_grad():
        torch.manual_seed(10)
        first = logits_of(model, x)
        torch.manual_seed(11)
        second = logits_of(model, x)
        expect(torch.equal(first, second), "in eval mode two forward passes of the same images differ: is dropout "
                                           "applied as F.dropout(..., training=True)? Use self.dropout, which "
                                           "model.eval() switches off")
        model.train()
        torch.manual_seed(10)
        first = logits_of(model, x)
        torch.manual_seed(11)
        second = logits_of(model, x)
    expect(not torch.equal(first, second), "in training mode, with dropout 0.5, two forward passes of the same "
                                           "images give the same logits: Dropout is never applied; pass the "
                                           "pooled features through self.dropout before the classifier")


@wrong_answer("p2-cnn.2", diagnosis="softmax at the end")
def forward_with_softmax(self, x):
    """Probabilities instead of logits: CrossEntropyLoss then applies softmax a second time."""
    x = self.conv1(x)
    if self.pool_first:
        x = self.pool(x)
    x = self.pool(self.conv4(self.conv3(self.pool(self.conv2(x)))))
    x = torch.amax(self.pool(self.conv5(x)), dim=(2, 3))
    return torch.softmax(self.classifier(self.dropout(x)), dim=1)


@wrong_answer("p2-cnn.2", diagnosis="Dropout is never applied")
def forward_without_dropout(self, x):
    """The Dropout layer is built but the forward pass skips it."""
    x = self.conv1(x)
    if self.pool_first:
        x = self.pool(x)
    x = self.pool(self.conv4(self.conv3(self.pool(self.conv2(x)))))
    return self.classifier(torch.amax(self.pool(self.conv5(x)), dim=(2, 3)))


@wrong_answer("p2-cnn.2", diagnosis="F.dropout(..., training=True)")
def forward_with_dropout_always_on(self, x):
    """Functional dropout with training=True: still dropping features at evaluation."""
    x = self.conv1(x)
    if self.pool_first:
        x = self.pool(x)
    x = self.pool(self.conv4(self.conv3(self.pool(self.conv2(x)))))
    x = torch.amax(self.pool(self.conv5(x)), dim=(2, 3))
    return self.classifier(F.dropout(x, self.dropout.p, training=True))


@wrong_answer("p2-cnn.2", diagnosis="pool after conv1 only when self.pool_first")
def forward_ignores_pool_first(self, x):
    """pool_first is never looked at: the early pooling variant trains as the plain one."""
    x = self.pool(self.conv4(self.conv3(self.pool(self.conv2(self.conv1(x))))))
    return self.classifier(self.dropout(torch.amax(self.pool(self.conv5(x)), dim=(2, 3))))


# --------------------------------------------------------------------------- p2-cnn.3 the one-cycle schedule


def factors(steps, total: int = 100, warmup: int = 30, final: float = 0.0) -> list[float]:
    values = [p2_cnn.one_cycle_multiplier(s, total_steps=total, warmup_steps=warmup, final_fraction=final)
              for s in steps]
    expect(all(isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1) for v in values),
           f"one_cycle_multiplier should return a number, got {type(values[0]).__name__}")
    return [float(v) for v in values]


def close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9


@exercise("p2-cnn.3")
def test_warmup_ramps_from_the_first_step_to_the_peak():
    first, second, peak, after = factors([0, 1, 29, 30])
    expect(not close(first, 1.0), "step 0 is already at the peak (factor 1): no warm-up. Ramp up over the "
                                  "first warmup_steps steps: (t + 1) / warmup_steps")
    expect(not close(first, 0.0), "step 0's factor is 0: a wasted step (the ramp starts at t / W, off by one); "
                                  "the ramp is (t + 1) / warmup_steps, 1/30 at step 0")
    expect(close(first, 1 / 30) and close(second, 2 / 30) and close(peak, 1.0),
           f"with a 30-step warm-up the factors at steps 0, 1 and 29 are {first:.4f}, {second:.4f}, {peak:.4f}, "
           "expected 1/30, 2/30 and 1: (t + 1) / warmup_steps")
    expect(close(after, 1.0), f"step 30, the first after the warm-up, has factor {after:.4f}, expected 1: "
                              "the decay starts from the peak")


@exercise("p2-cnn.3")
def test_decay_is_linear_and_ends_one_past_the_last_step():
    middle, last, end, beyond = factors([65, 99, 100, 140])
    expect(not close(last, 0.0), "the last step (t = total_steps - 1 = 99) has factor 0: a wasted step, off by "
                                 "one at the end; the factor reaches final_fraction at t = total_steps")
    expect(close(middle, 0.5), f"step 65 of 100 (warm-up 30) has factor {middle:.4f}, expected 0.5: the decay "
                               "falls linearly from 1 at step 30 to 0 at step 100, (t - W) / (total - W) of the way")
    expect(close(last, 1 / 70), f"the last step (t = 99) has factor {last:.5f}, expected 1/70: "
                                "1 - (t - W) / (total - W)")
    expect(close(end, 0.0) and close(beyond, 0.0),
           f"at steps 100 and 140 the factors are {end:.4f} and {beyond:.4f}, expected 0: the decay stops at "
           "final_fraction (cap the fraction done at 1, or a long run's learning rate turns negative)")


@exercise("p2-cnn.3")
def test_decay_ends_at_final_fraction():
    values = factors([30, 65, 100, 150], final=0.1)
    shown = f"the factors at steps 30, 65, 100, 150 are {[round(v, 4) for v in values]}, expected [1, 0.55, 0.1, 0.1]"
    expect(not close(values[2], 0.0), f"with final_fraction 0.1 {shown}: the line goes from 1 down to "
                                      "final_fraction, not to 0: 1 - (1 - final_fraction) * (fraction done)")
    expect(all(close(v, w) for v, w in zip(values, (1.0, 0.55, 0.1, 0.1))), f"with final_fraction 0.1 {shown}")
    single = factors([0, 1, 5], total=6, warmup=1)
    expect(close(single[0], 1.0) and close(single[1], 1.0) and close(single[2], 0.2),
           f"with total 6 and a 1-step warm-up the factors at steps 0, 1, 5 are {[round(v, 4) for v in single]}, "
           "expected [1, 1, 0.2]")


@wrong_answer("p2-cnn.3", diagnosis="no warm-up")
def schedule_without_warmup(step, *, total_steps, warmup_steps, final_fraction=0.0):
    """Straight to the peak, then the linear decay over all the steps."""
    progress = min(1.0, step / total_steps)
    return 1.0 - (1.0 - final_fraction) * progress


@wrong_answer("p2-cnn.3", diagnosis="a wasted step (the ramp starts at t / W")
def schedule_ramp_from_zero(step, *, total_steps, warmup_steps, final_fraction=0.0):
    """The ramp is t / W: step 0 has learning rate 0."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 1.0 - (1.0 - final_fraction) * progress


@wrong_answer("p2-cnn.3", diagnosis="off by one at the end")
def schedule_zero_at_the_last_step(step, *, total_steps, warmup_steps, final_fraction=0.0):
    """The decay reaches its end at the last step, t = total - 1, which then learns nothing."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - 1 - warmup_steps))
    return 1.0 - (1.0 - final_fraction) * progress


@wrong_answer("p2-cnn.3", diagnosis="turns negative")
def schedule_not_capped(step, *, total_steps, warmup_steps, final_fraction=0.0):
    """The fraction done is not capped at 1: past total_steps the factor goes below final_fraction."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0 - (1.0 - final_fraction) * (step - warmup_steps) / (total_steps - warmup_steps)


@wrong_answer("p2-cnn.3", diagnosis="not to 0")
def schedule_ignores_final_fraction(step, *, total_steps, warmup_steps, final_fraction=0.0):
    """final_fraction is ignored: the line always ends at 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0 - min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))


# --------------------------------------------------------------------------- p2-cnn.4 weight-decay groups


class SmallNet(nn.Module):
    """Every kind of parameter the CNN has, and one frozen one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_with_bias = nn.Conv2d(4, 4, 1)
        self.classifier = nn.Linear(4, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


SHOULD_DECAY = {"conv.weight", "conv_with_bias.weight", "classifier.weight"}
SHOULD_NOT_DECAY = {"bn.weight", "bn.bias", "conv_with_bias.bias", "classifier.bias"}


def decay_of_each_parameter(groups, model: nn.Module) -> dict[str, list[float]]:
    """Parameter name -> the weight decay of every group it appears in."""
    expect(isinstance(groups, (list, tuple)) and all(isinstance(g, dict) and "params" in g for g in groups),
           "weight_decay_groups should return a list of dicts, each with a 'params' list and its 'weight_decay'")
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, list[float]] = {}
    for group in groups:
        expect("weight_decay" in group, "a group has no 'weight_decay' entry: give each group its own, "
                                        "the decay or 0.0")
        for p in group["params"]:
            found.setdefault(names.get(id(p), "<not a parameter of the model>"), []).append(group["weight_decay"])
    return found


@exercise("p2-cnn.4")
def test_weights_decay_and_biases_and_batchnorm_do_not():
    model = SmallNet()
    found = decay_of_each_parameter(p2_cnn.weight_decay_groups(model, 5e-4), model)
    missing = sorted((SHOULD_DECAY | SHOULD_NOT_DECAY) - set(found))
    expect(not missing, f"{missing} are missing from the groups: the optimiser would never update them. "
                        "Every trainable parameter belongs to one group")
    twice = sorted(n for n, d in found.items() if len(d) > 1)
    expect(not twice, f"{twice} appear in more than one group: each parameter belongs to exactly one")
    decayed = {n for n, d in found.items() if d[0] != 0}
    if SHOULD_NOT_DECAY <= decayed:
        expect(False, "every parameter is decayed, biases and BatchNorm's scale and shift included: "
                      "put the parameters with one dimension (p.ndim <= 1) in a group with weight_decay 0")
    if "bn.weight" in decayed:
        expect(False, "BatchNorm's scale is decayed (its parameter is named 'weight', like a kernel's): tell "
                      "them apart by shape (p.ndim > 1 for kernels and matrices), not by name")
    wrong = sorted(SHOULD_NOT_DECAY & decayed)
    expect(not wrong, f"{wrong} are decayed: biases and BatchNorm parameters (one dimension) get weight_decay 0")
    undecayed = {n: found[n][0] for n in SHOULD_DECAY if found[n][0] != 5e-4}
    expect(not undecayed, f"{undecayed}: kernels and weight matrices get the weight_decay passed in (5e-4)")


@exercise("p2-cnn.4")
def test_groups_feed_sgd_and_skip_frozen_parameters():
    model = SmallNet()
    groups = p2_cnn.weight_decay_groups(model, 1e-3)
    found = decay_of_each_parameter(groups, model)
    expect("frozen.weight" not in found and "frozen.bias" not in found,
           "a frozen parameter (requires_grad=False) is in the groups: keep only those with requires_grad")
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=0.123)
    per_parameter = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    expect(per_parameter.get(id(model.classifier.bias)) == 0.0 and per_parameter.get(id(model.conv.weight)) == 1e-3,
           "inside torch.optim.SGD the groups do not give the classifier's bias weight decay 0 and the "
           "convolution's kernel 1e-3")


@wrong_answer("p2-cnn.4", diagnosis="every parameter is decayed")
def groups_decay_everything(model, weight_decay):
    """One group, decay on everything: biases and BatchNorm shrink towards zero too."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


@wrong_answer("p2-cnn.4", diagnosis="BatchNorm's scale is decayed")
def groups_by_name(model, weight_decay):
    """Chosen by name: every '...weight' decays, BatchNorm's scale (bn.weight) included."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in params if n.endswith("weight")], "weight_decay": weight_decay},
            {"params": [p for n, p in params if not n.endswith("weight")], "weight_decay": 0.0}]


@wrong_answer("p2-cnn.4", diagnosis="are missing from the groups")
def groups_without_the_no_decay_group(model, weight_decay):
    """Only the decayed group is returned: biases and BatchNorm are never trained."""
    return [{"params": [p for p in model.parameters() if p.requires_grad and p.ndim > 1],
             "weight_decay": weight_decay}]


# --------------------------------------------------------------------------- p2-cnn.5 the LR range test's sweep


def sweep(total: int, lr_min: float, lr_max: float) -> list[float]:
    values = [under_the_hood.lr_range_schedule(s, total, lr_min, lr_max) for s in range(total)]
    expect(all(isinstance(v, (int, float)) and math.isfinite(v) for v in values),
           f"lr_range_schedule should return a finite number for every step, got {values}")
    return [float(v) for v in values]


def near(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


@exercise("p2-cnn.5")
def test_range_sweep_goes_from_lr_min_to_lr_max():
    values = sweep(6, 1e-4, 10.0)
    shown = f"a 6-step sweep from 1e-4 to 10 gives {[float(f'{v:.4g}') for v in values]}"
    expect(near(values[0], 1e-4), f"{shown}: step 0 should run at lr_min, 1e-4")
    expect(near(values[-1], 10.0), f"{shown}: the last step (5) should run at lr_max, 10, but the sweep never "
                                   "reaches lr_max: the fraction done is step / (total_steps - 1), 1 at the last step")
    expect(all(near(v, w) for v, w in zip(values, (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0))),
           f"{shown}, expected 1e-4, 1e-3, 1e-2, 0.1, 1, 10: one decade per step (a linear sweep spends its steps "
           "at the top decade)")


@exercise("p2-cnn.5")
def test_range_sweep_is_equal_steps_on_a_log_axis():
    middle = sweep(3, 0.01, 1.0)[1]
    expect(not near(middle, 0.505), "the middle of a 3-step sweep from 0.01 to 1 is 0.505, the arithmetic mean: "
                                    "that is a linear sweep; the range test's sweep is exponential, lr_min * "
                                    "(lr_max / lr_min) ** fraction, and its middle is the geometric mean 0.1")
    expect(near(middle, 0.1), f"the middle of a 3-step sweep from 0.01 to 1 is {middle:.4g}, expected 0.1, "
                              "the geometric mean")
    values = sweep(101, 1e-6, 1.0)
    ratios = [b / a for a, b in zip(values, values[1:])]
    expect(max(ratios) / min(ratios) - 1 < 1e-9 and near(ratios[0], 10 ** 0.06),
           f"over 101 steps from 1e-6 to 1 each step should multiply the rate by 10 ** (6 / 100) = 1.1482, got "
           f"factors from {min(ratios):.4f} to {max(ratios):.4f}")


@wrong_answer("p2-cnn.5", diagnosis="that is a linear sweep")
def sweep_linear(step, total_steps, lr_min, lr_max):
    """A straight line from lr_min to lr_max: nearly every step in the top decade."""
    return lr_min + (lr_max - lr_min) * step / (total_steps - 1)


@wrong_answer("p2-cnn.5", diagnosis="never reaches lr_max")
def sweep_divides_by_total(step, total_steps, lr_min, lr_max):
    """The fraction done is step / total_steps: the last step stops one factor short of lr_max."""
    return lr_min * (lr_max / lr_min) ** (step / total_steps)


@wrong_answer("p2-cnn.5", diagnosis="step 0 should run at lr_min")
def sweep_downwards(step, total_steps, lr_min, lr_max):
    """The sweep runs backwards, from lr_max down to lr_min."""
    return lr_max * (lr_min / lr_max) ** (step / (total_steps - 1))


# --------------------------------------------------------------------------- p2-cnn.6 one Adam step


def adam_of(param, grad, m, v, step, **options):
    out = under_the_hood.adam_step(param, grad, m, v, step, **options)
    expect(isinstance(out, tuple) and len(out) == 3 and all(isinstance(t, torch.Tensor) for t in out),
           "adam_step should return a tuple of three tensors: (new_param, new_exp_avg, new_exp_avg_sq)")
    return out


@exercise("p2-cnn.6")
def test_first_adam_step_moves_each_coordinate_by_lr():
    param = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    grad = torch.tensor([0.1, -1000.0, 1e-3], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    new, m, v = adam_of(param.clone(), grad.clone(), zeros.clone(), zeros.clone(), 1, lr=0.01)
    expect(torch.allclose(m, 0.1 * grad), f"after one step exp_avg is {m.tolist()}, expected (1 - b1) * grad = "
                                          f"{(0.1 * grad).tolist()}")
    expect(torch.allclose(v, 0.001 * grad ** 2),
           f"after one step exp_avg_sq is {v.tolist()}, expected (1 - b2) * grad ** 2 = "
           f"{(0.001 * grad ** 2).tolist()}: "
           "the second running mean is of the squared gradient")
    moved = (param - new).tolist()
    # m_hat = grad and sqrt(v_hat) = |grad| after one step: each moves by lr * |g| / (|g| + eps), written out
    # exactly (a bare 0.01 would be 1e-7 off for the first, and the check would sit on its own tolerance)
    expected = [0.01 * 0.1 / (0.1 + 1e-8), -0.01 * 1000 / (1000 + 1e-8), 0.01 * 1e-3 / (1e-3 + 1e-8)]
    if all(math.isfinite(d) for d in moved) and abs(abs(moved[0]) / 0.01 - 0.1 / math.sqrt(0.001)) < 1e-3:
        expect(False, f"the first step moved the parameters by {moved}, about 3.16 x lr: no bias correction. m and "
                      "v start at 0, so divide them by 1 - b1 ** step and 1 - b2 ** step (step counts from 1)")
    expect(all(math.isfinite(d) for d in moved),
           f"the first step gives {new.tolist()}: not finite. The bias correction divides by 1 - beta ** step, and "
           "step counts from 1 (1 - beta ** 0 is 0)")
    expect(all(math.isclose(d, e, rel_tol=1e-7, abs_tol=1e-12) for d, e in zip(moved, expected)),
           f"the first step moved the parameters by {moved}, expected about lr = 0.01 each, whatever the gradient's "
           f"scale ({expected}): lr * m_hat / (sqrt(v_hat) + eps), eps outside the square root")


@exercise("p2-cnn.6")
def test_five_steps_match_torch_adam():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, dtype=torch.float64, generator=gen)
    grads = [1e-3 * torch.randn(4, dtype=torch.float64, generator=gen) for _ in range(5)]
    options = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-3)
    reference = start.clone().requires_grad_(True)
    torch_adam = torch.optim.Adam([reference], **options)
    param, m, v = start.clone(), torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        reference.grad = g.clone()
        torch_adam.step()
        passed = (param, g, m, v)
        copies = tuple(x.clone() for x in passed)
        param, m, v = adam_of(*passed, t, **options)
        expect(all(torch.equal(a, b) for a, b in zip(passed, copies)),
               "adam_step changed its inputs in place: return new tensors instead")
    gap = (param - reference.detach()).abs().max().item()
    expect(gap < 1e-9, f"after 5 steps (lr 0.05, betas (0.8, 0.99), eps 1e-3, gradients near 1e-3) the parameters "
                       f"differ from torch.optim.Adam's by {gap:.3g}: use the betas and eps passed in, and add eps "
                       "outside the square root, sqrt(v_hat) + eps")


@wrong_answer("p2-cnn.6", diagnosis="no bias correction")
def adam_without_bias_correction(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """m and v used as they are: the first steps are about 3 times too large."""
    m = betas[0] * exp_avg + (1 - betas[0]) * grad
    v = betas[1] * exp_avg_sq + (1 - betas[1]) * grad * grad
    return param - lr * m / (v.sqrt() + eps), m, v


@wrong_answer("p2-cnn.6", diagnosis="add eps outside the square root")
def adam_eps_inside_the_root(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """eps under the square root: sqrt(v_hat + eps), a much larger floor than torch's sqrt(v_hat) + eps."""
    m = betas[0] * exp_avg + (1 - betas[0]) * grad
    v = betas[1] * exp_avg_sq + (1 - betas[1]) * grad * grad
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return param - lr * m_hat / (v_hat + eps).sqrt(), m, v


@wrong_answer("p2-cnn.6", diagnosis="the squared gradient")
def adam_mean_of_abs_gradient(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """The second running mean is of |grad|, not grad ** 2."""
    m = betas[0] * exp_avg + (1 - betas[0]) * grad
    v = betas[1] * exp_avg_sq + (1 - betas[1]) * grad.abs()
    m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v


@wrong_answer("p2-cnn.6", diagnosis="step counts from 1")
def adam_step_from_zero(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """The bias correction uses step - 1: the first step divides by 1 - beta ** 0 = 0."""
    m = betas[0] * exp_avg + (1 - betas[0]) * grad
    v = betas[1] * exp_avg_sq + (1 - betas[1]) * grad * grad
    m_hat, v_hat = m / (1 - betas[0] ** (step - 1)), v / (1 - betas[1] ** (step - 1))
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
