"""Checks for p1-refactor's exercises (``make check M=p1-refactor``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
from the raw uint8 pixels, by a plain SGD loop written out below, or from
hand-made validation curves.  The code under test may be a learner's, or a
stub.  Models and data are tiny and synthetic: every check runs in milliseconds.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from common.data import Split
from ml60.grading import exercise, expect, wrong_answer
from phase1_foundation import p1_refactor


def max_diff(a, b) -> float:
    a, b = (torch.as_tensor(t).detach().to(torch.float64) for t in (a, b))
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- p1-refactor.1 the Dataset


def tiny_split() -> Split:
    """Five 28x28 uint8 images, each with its own pattern, labelled 7, 2, 9, 0, 4."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8, generator=g)
    return Split(images, torch.tensor([7, 2, 9, 0, 4]))


def get_example(dataset, i: int):
    item = dataset[i]
    expect(isinstance(item, tuple) and len(item) == 2,
           f"dataset[{i}] should be a pair (image, label), got {type(item).__name__}"
           + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""))
    return item


@exercise("p1-refactor.1")
def test_getitem_returns_the_transformed_image_and_its_label():
    split = tiny_split()
    dataset = p1_refactor.MNISTDataset(split, transforms.ToTensor())
    for i in (0, 3):
        image, label = get_example(dataset, i)
        if isinstance(image, int) and torch.is_tensor(label):
            expect(False, f"dataset[{i}] is (label, image): return (image, label), the order the DataLoader "
                          "unpacks as x, y")
        expect(torch.is_tensor(image), f"dataset[{i}]'s image is a {type(image).__name__}, not a tensor: the "
                                       "transform was not applied (call self.transform on the PIL image)")
        expect(tuple(image.shape) == (1, 28, 28), f"dataset[{i}]'s image has shape {tuple(image.shape)}, expected "
                                                  "(1, 28, 28) after ToTensor")
        expected = split.images[i].float() / 255
        expect(max_diff(image, expected) < 1e-6,
               f"dataset[{i}]'s image is not image {i} of the split (differs by up to {max_diff(image, expected):.3f} "
               "after ToTensor): index self.images with i")
        expect(int(label) == int(split.labels[i]), f"dataset[{i}]'s label is {label}, expected "
                                                   f"{int(split.labels[i])}: index self.labels with i")


@exercise("p1-refactor.1")
def test_getitem_hands_the_transform_a_pil_image_and_batches():
    split = tiny_split()
    seen = []

    def recording_transform(image):
        seen.append(image)
        return transforms.functional.to_tensor(image) * 2 - 1

    dataset = p1_refactor.MNISTDataset(split, recording_transform)
    image, label = get_example(dataset, 2)
    expect(seen, "asking for dataset[2] never called the transform: call self.transform on the PIL image")
    expect(len(seen) == 1, f"asking for one example called the transform {len(seen)} times, expected once")
    expect(isinstance(seen[0], Image.Image), f"the transform received a {type(seen[0]).__name__}; torchvision's "
                                             "transforms expect a PIL image: Image.fromarray(self.images[i], mode='L')")
    expect(torch.is_tensor(image) and max_diff(image, split.images[2].float() / 255 * 2 - 1) < 1e-6,
           "dataset[2] does not return what the transform returned: return (self.transform(image), label)")
    untransformed, _ = get_example(p1_refactor.MNISTDataset(split), 1)
    expect(isinstance(untransformed, Image.Image)
           and (torch.from_numpy(np.array(untransformed)) == split.images[1, 0]).all(),
           "with no transform, dataset[1] should be image 1 as a PIL image")
    x, y = next(iter(DataLoader(dataset, batch_size=5)))
    expect(torch.is_tensor(x) and tuple(x.shape) == (5, 1, 28, 28) and y.tolist() == [7, 2, 9, 0, 4],
           "a DataLoader over the dataset should give x of shape (5, 1, 28, 28) and y = [7, 2, 9, 0, 4], got "
           f"{tuple(getattr(x, 'shape', ()))} and {getattr(y, 'tolist', lambda: y)()}")


@wrong_answer("p1-refactor.1", diagnosis="the transform was not applied")
def getitem_without_transform(self, i):
    """The PIL image comes back as it is: the transform is stored and never used."""
    return Image.fromarray(self.images[i], mode="L"), self.labels[i]


@wrong_answer("p1-refactor.1", diagnosis="return (image, label)")
def getitem_label_first(self, i):
    """The pair in the wrong order: (label, image)."""
    image = Image.fromarray(self.images[i], mode="L")
    return self.labels[i], (self.transform(image) if self.transform else image)


@wrong_answer("p1-refactor.1", diagnosis="torchvision's transforms expect a PIL image")
def getitem_passes_the_array(self, i):
    """The raw uint8 array goes to the transform (ToTensor copes; a PIL-only transform would not)."""
    image = self.images[i]
    return (self.transform(image) if self.transform else Image.fromarray(image, mode="L")), self.labels[i]


# --------------------------------------------------------------------------- p1-refactor.2 one training epoch


class ModeRecorder(nn.Module):
    """A linear classifier that records, at each forward pass, whether it ran in train mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.linear(x)


BATCH_SIZES = (4, 4, 2)   # an uneven last batch
LR = 0.2


def lr_at(step: int) -> float:
    """The check's own schedule: the learning rate halves at every optimiser step."""
    return LR * 0.5 ** step


def epoch_setup():
    """A Trainer around ModeRecorder, switched to plain SGD with the halving schedule, and three batches."""
    torch.manual_seed(0)
    model = ModeRecorder()
    batches = [(torch.randn(n, 5), torch.randint(0, 3, (n,))) for n in BATCH_SIZES]
    start = copy.deepcopy(model.linear)
    trainer = p1_refactor.Trainer(model, epochs=1, lr=LR, steps_per_epoch=len(batches), device=torch.device("cpu"))
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 0.5 ** step)
    model.eval()   # as the previous epoch's evaluation left it
    return trainer, model, batches, start


def reference_epoch(linear: nn.Linear, batches, *, stepped_schedule=True, zero_grad=True):
    """The answer key: plain SGD over the batches, written out; returns the weights and per-example figures."""
    linear = copy.deepcopy(linear)
    params = list(linear.parameters())
    gradient_sums = [torch.zeros_like(p) for p in params]   # what .grad holds when nothing clears it
    loss_sum, correct = 0.0, 0
    for step, (x, y) in enumerate(batches):
        logits = linear(x)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, total in zip(params, grads, gradient_sums):
                total += g
                p -= (lr_at(step) if stepped_schedule else LR) * (g if zero_grad else total)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
    seen = sum(BATCH_SIZES)
    return linear, loss_sum / seen, correct / seen


@exercise("p1-refactor.2")
def test_train_epoch_trains_in_train_mode_with_the_schedule():
    trainer, model, batches, start = epoch_setup()
    trainer.train_epoch(batches)
    expect(len(model.modes) == len(batches), f"{len(batches)} batches gave {len(model.modes)} forward passes, "
                                             "expected one per batch")
    expect(all(model.modes), f"{model.modes.count(False)} of {len(model.modes)} forward passes ran in eval mode: "
                             "call self.model.train() at the start of the epoch (evaluation left the model in eval "
                             "mode, which switches dropout and BatchNorm's batch statistics off)")
    steps = trainer.scheduler.last_epoch
    expect(steps == len(batches), f"the learning-rate schedule advanced {steps} times over {len(batches)} batches: "
                                  "call self.scheduler.step() after every self.optimizer.step() (the schedule counts "
                                  "optimiser steps, not epochs)")
    expected, _, _ = reference_epoch(start, batches)
    accumulated, _, _ = reference_epoch(start, batches, zero_grad=False)
    error = max(max_diff(a, b) for a, b in zip(model.linear.parameters(), expected.parameters()))
    if error > 1e-6 and all(max_diff(a, b) < 1e-6 for a, b in zip(model.linear.parameters(),
                                                                   accumulated.parameters())):
        expect(False, "each step used the sum of every gradient so far: call self.optimizer.zero_grad() before "
                      "loss.backward()")
    expect(error < 1e-6, f"after the epoch the weights differ from plain SGD with the schedule by up to {error:.2g}: "
                         "per batch, forward, loss, zero_grad, backward, optimizer.step(), scheduler.step()")


@exercise("p1-refactor.2")
def test_train_epoch_reports_figures_per_example():
    trainer, model, batches, start = epoch_setup()
    result = trainer.train_epoch(batches)
    expect(isinstance(result, dict) and {"train_loss", "train_accuracy"} <= set(result),
           f"train_epoch should return a dict with train_loss and train_accuracy, got {result!r}")
    _, loss, accuracy = reference_epoch(start, batches)
    per_batch_losses = []
    reference = copy.deepcopy(start)
    for step, (x, y) in enumerate(batches):
        batch_loss = F.cross_entropy(reference(x), y)
        per_batch_losses.append(batch_loss.item())
        grads = torch.autograd.grad(batch_loss, list(reference.parameters()))
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads):
                p -= lr_at(step) * g
    per_batch_mean = sum(per_batch_losses) / len(per_batch_losses)
    got = float(result["train_loss"])
    if abs(got - per_batch_mean) < 1e-5 and abs(got - loss) > 1e-5:
        expect(False, f"train_loss {got:.5f} is the mean of the {len(batches)} batch losses; the last batch has "
                      f"{BATCH_SIZES[-1]} examples, not {BATCH_SIZES[0]}. Sum loss * len(y) over the batches and "
                      f"divide by the {sum(BATCH_SIZES)} examples: {loss:.5f}")
    expect(abs(got - loss) < 1e-5, f"train_loss {got:.5f}, expected {loss:.5f}: the mean over the "
                                   f"{sum(BATCH_SIZES)} examples of each batch's loss before its step (each batch's "
                                   "loss depends on the steps before it: if the weights are wrong too, fix them first)")
    expect(abs(float(result["train_accuracy"]) - accuracy) < 1e-6,
           f"train_accuracy {float(result['train_accuracy']):.4f}, expected {accuracy:.4f}: correct predictions "
           f"(argmax of the logits each batch was trained on) over all {sum(BATCH_SIZES)} examples")


def _epoch(self, loader, *, train_mode=True, schedule=True, per_batch=False):
    """The reference epoch with one switch flipped: what the wrong answers below share."""
    if train_mode:
        self.model.train()
    losses, sizes, correct = [], [], 0
    for x, y in loader:
        logits = self.model(x)
        loss = self.criterion(logits, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if schedule:
            self.scheduler.step()
        losses.append(loss.item())
        sizes.append(len(y))
        correct += int((logits.argmax(1) == y).sum())
    if per_batch:
        return {"train_loss": sum(losses) / len(losses), "train_accuracy": correct / sum(sizes)}
    weighted = sum(loss * n for loss, n in zip(losses, sizes)) / sum(sizes)
    return {"train_loss": weighted, "train_accuracy": correct / sum(sizes)}


@wrong_answer("p1-refactor.2", diagnosis="call self.model.train() at the start of the epoch")
def train_epoch_left_in_eval_mode(self, loader):
    """No model.train(): after the first evaluation, every epoch trains in eval mode."""
    return _epoch(self, loader, train_mode=False)


@wrong_answer("p1-refactor.2", diagnosis="call self.scheduler.step() after every self.optimizer.step()")
def train_epoch_without_schedule(self, loader):
    """The scheduler is never stepped: the learning rate stays at its first value all run."""
    return _epoch(self, loader, schedule=False)


@wrong_answer("p1-refactor.2", diagnosis="is the mean of the 3 batch losses")
def train_epoch_loss_per_batch(self, loader):
    """The epoch's loss is the mean of the batch losses, so the short last batch counts as a full one."""
    return _epoch(self, loader, per_batch=True)


@wrong_answer("p1-refactor.2", diagnosis="call self.optimizer.zero_grad() before loss.backward()")
def train_epoch_without_zero_grad(self, loader):
    """No zero_grad: every step applies the sum of all the gradients of the epoch so far."""
    self.model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        logits = self.model(x)
        loss = self.criterion(logits, y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return {"train_loss": loss_sum / seen, "train_accuracy": correct / seen}


# --------------------------------------------------------------------------- p1-refactor.3 early stopping


def curve(val_losses, train_losses=None) -> list[dict]:
    """A history as Trainer.fit keeps it: one dict per epoch."""
    train_losses = train_losses or [1.0 / (epoch + 1) for epoch in range(len(val_losses))]   # always falling
    return [{"epoch": e + 1, "train_loss": t, "val_loss": v} for e, (t, v) in enumerate(zip(train_losses, val_losses))]


def first_stop(history: list[dict], patience: int) -> int | None:
    """The first epoch after which the learner's should_stop_early says stop (None: never)."""
    for finished in range(1, len(history) + 1):
        if p1_refactor.should_stop_early(history[:finished], patience):
            return finished
    return None


@exercise("p1-refactor.3")
def test_watches_the_validation_loss_not_the_training_loss():
    improving = [0.90, 0.70, 0.60, 0.55, 0.52, 0.50]
    flat_train = [0.40, 0.41, 0.42, 0.42, 0.43, 0.44]
    stop = first_stop(curve(improving, flat_train), patience=2)
    expect(stop is None, f"it stops after epoch {stop} while val_loss was still falling every epoch (training loss "
                         "was not): are you watching the training loss? Stop on h['val_loss']")
    expect(not p1_refactor.should_stop_early(curve([0.5]), patience=1),
           "after a single epoch there is nothing to compare with: it should not stop")


@exercise("p1-refactor.3")
def test_stops_after_patience_epochs_without_a_new_best():
    # lowest at epoch 3; epoch 4 is worse than 3, epoch 5 better than 4 but still above the best
    history = curve([0.90, 0.60, 0.50, 0.56, 0.53, 0.58, 0.55, 0.59])
    for patience, expected in ((2, 5), (3, 6)):
        stop = first_stop(history, patience)
        if stop == 4:
            expect(False, f"with patience {patience} it stops after epoch 4, on the first epoch without "
                          "improvement: patience is the number of epochs in a row without a new lowest val_loss")
        if stop is None:
            expect(False, f"with patience {patience} it never stops, though val_loss has not gone below its lowest "
                          "(0.50, epoch 3) for 5 epochs: count the epochs since the lowest val_loss so far, not "
                          "since the previous epoch (0.53 beats 0.56 but not 0.50)")
        expect(stop == expected, f"with patience {patience} it stops after epoch {stop}, expected {expected}: the "
                                 f"lowest val_loss is at epoch 3, so {patience} epochs without a new lowest end at "
                                 f"epoch {expected}")


@wrong_answer("p1-refactor.3", diagnosis="on the first epoch without improvement")
def stop_on_first_non_improvement(history, patience):
    """Patience ignored: one epoch without a new best stops training."""
    losses = [h["val_loss"] for h in history]
    return len(losses) > 1 and losses[-1] >= min(losses[:-1])


@wrong_answer("p1-refactor.3", diagnosis="are you watching the training loss?")
def stop_on_training_loss(history, patience):
    """The training loss is watched: it keeps falling as the model memorises, so training never stops."""
    losses = [h["train_loss"] for h in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    return len(losses) - 1 - best >= patience


@wrong_answer("p1-refactor.3", diagnosis="not since the previous epoch")
def stop_compared_with_previous_epoch(history, patience):
    """Each epoch is compared with the one before, not the best: a wobbling loss resets the count."""
    losses = [h["val_loss"] for h in history]
    stale = 0
    for before, now in zip(losses, losses[1:]):
        stale = stale + 1 if now >= before else 0
    return stale >= patience


@wrong_answer("p1-refactor.3", diagnosis="expected 5")
def stop_one_epoch_late(history, patience):
    """Off by one: it waits for more than `patience` epochs without improvement."""
    losses = [h["val_loss"] for h in history]
    best = min(range(len(losses)), key=losses.__getitem__)
    return len(losses) - 1 - best > patience
