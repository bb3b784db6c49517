"""Checks for p1-train's exercises (``make check M=p1-train``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
by hand from the published MNIST statistics, by ``torch.autograd.grad`` on a
copy of the model, or by one whole-set forward pass in eval mode.  The code
under test may be a learner's, or a stub.  The models are tiny ones defined
here, the data synthetic: every check runs in milliseconds.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from ml60.grading import exercise, expect, wrong_answer
from phase1_foundation import baselines, p1_train

MEAN, STD = 0.1307, 0.3081   # MNIST's published training-pixel statistics


def max_diff(a, b) -> float:
    a, b = (torch.as_tensor(t).detach().to(torch.float64) for t in (a, b))
    return float((a - b).abs().max())


# --------------------------------------------------------------------------- p1-train.1 the transform


def digit_image() -> tuple[Image.Image, np.ndarray]:
    """A 28x28 greyscale image with black, white and mid-grey pixels, and its pixel values."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 10:14] = 255
    pixels[8:12, 4:24] = 128
    pixels[0, 0] = 51
    return Image.fromarray(pixels, mode="L"), pixels


@exercise("p1-train.1")
def test_seed_transform_scales_then_normalises():
    transform = p1_train.seed_transform()
    expect(callable(transform), f"seed_transform() should return the transform (a callable), got {type(transform)}")
    image, pixels = digit_image()
    out = transform(image)
    expect(isinstance(out, torch.Tensor), f"the transform should turn a PIL image into a tensor, got {type(out)}: "
                                          "ToTensor() is the step that does that")
    expect(tuple(out.shape) == (1, 28, 28), f"a 28x28 greyscale image should become a (1, 28, 28) tensor, got "
                                            f"{tuple(out.shape)}: ToTensor adds the channel axis")
    expect(out.dtype == torch.float32, f"the tensor should be float32, got {out.dtype}")
    expected = (torch.from_numpy(pixels).float() / 255 - MEAN) / STD
    low, high = float(out.min()), float(out.max())
    if max_diff(out[0], expected) < 1e-5:
        return
    if max_diff(out[0], torch.from_numpy(pixels).float() / 255) < 1e-5:
        expect(False, f"values run from {low:.2f} to {high:.2f}, scaled to [0, 1] but not normalised: add "
                      f"Normalize({MEAN}, {STD}) after ToTensor (MNIST_MEAN, MNIST_STD)")
    if max_diff(out[0], (torch.from_numpy(pixels).float() - MEAN) / STD) < 1e-3:
        expect(False, f"values run from {low:.1f} to {high:.1f}: the pixels were not scaled to [0, 1] before "
                      "Normalize. ToTensor divides by 255; PILToTensor does not")
    if max_diff(out[0], (torch.from_numpy(pixels).float() / 255 - STD) / MEAN) < 1e-4:
        expect(False, "the mean and std are swapped: Normalize(mean, std) computes (x - mean) / std, with "
                      f"mean {MEAN} and std {STD}")
    expect(False, f"a white pixel should become (1 - {MEAN}) / {STD} = {(1 - MEAN) / STD:.4f} and a black one "
                  f"{-MEAN / STD:.4f}; got values from {low:.4f} to {high:.4f}: ToTensor, then "
                  f"Normalize({MEAN}, {STD})")


@wrong_answer("p1-train.1", diagnosis="scaled to [0, 1] but not normalised")
def transform_without_normalize():
    """ToTensor alone: the inputs sit in [0, 1], centred near 0.13 instead of 0."""
    return transforms.ToTensor()


@wrong_answer("p1-train.1", diagnosis="not scaled to [0, 1] before Normalize")
def transform_without_scaling():
    """Normalize applied to raw 0-255 values (PILToTensor keeps them): inputs in the hundreds."""
    return transforms.Compose([transforms.PILToTensor(), transforms.Lambda(lambda x: x.float()),
                               transforms.Normalize((MEAN,), (STD,))])


@wrong_answer("p1-train.1", diagnosis="the mean and std are swapped")
def transform_with_statistics_swapped():
    """Normalize(std, mean): the arguments in the wrong order."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((STD,), (MEAN,))])


# --------------------------------------------------------------------------- p1-train.2 one training step


def step_setup(seed: int = 0):
    """A small linear classifier, plain SGD, a batch, and stale gradients left over from a 'previous step'."""
    torch.manual_seed(seed)
    model = nn.Linear(6, 4)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 3.0   # what the last batch's backward left behind
    return model, x, y


def expected_step(model: nn.Module, x, y, lr: float):
    """The answer key: logits, loss and new parameters of one plain SGD step, by torch.autograd.grad."""
    twin = copy.deepcopy(model)
    params = list(twin.parameters())
    logits = twin(x)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, params)
    stale = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        after = [p - lr * g for p, g in zip(params, grads)]
        accumulated = [p - lr * (g + s) for p, g, s in zip(params, grads, stale)]
        stale_only = [p - lr * s for p, s in zip(params, stale)]
    return {"logits": logits.detach(), "loss": loss.item(), "after": after, "accumulated": accumulated,
            "stale_only": stale_only, "before": [p.detach().clone() for p in params]}


def close(params_a, params_b, tol: float = 1e-6) -> bool:
    return all(max_diff(a, b) < tol for a, b in zip(params_a, params_b))


@exercise("p1-train.2")
def test_train_step_takes_one_sgd_step():
    model, x, y = step_setup()
    lr = 0.1
    key = expected_step(model, x, y, lr)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    result = p1_train.train_step(model, optimizer, nn.CrossEntropyLoss(), x, y)
    expect(isinstance(result, tuple) and len(result) == 2,
           f"train_step should return (logits, loss), got {type(result).__name__}")
    logits, loss = result
    expect(tuple(logits.shape) == (8, 4), f"logits for 8 samples and 4 classes should be (8, 4), got "
                                          f"{tuple(logits.shape)}")
    after = [p.detach() for p in model.parameters()]
    if close(after, key["accumulated"]):
        expect(False, "the step used this batch's gradient plus the one left over from the previous step: "
                      "call optimizer.zero_grad() before loss.backward() (backward adds to .grad)")
    if close(after, key["before"]) or close(after, key["stale_only"]):
        expect(False, "the weights moved by the old gradients, or not at all: optimizer.step() must come after "
                      "loss.backward(), which is what fills .grad with this batch's gradient")
    loss_value = float(loss)
    softmaxed = F.cross_entropy(F.softmax(key["logits"], dim=1), y).item()
    if abs(loss_value - softmaxed) < 1e-6:
        expect(False, f"the loss is {loss_value:.4f} but cross-entropy of the logits is {key['loss']:.4f}: "
                      "softmax was applied before CrossEntropyLoss, which applies log-softmax itself. "
                      "Pass it the raw logits")
    expect(abs(loss_value - key["loss"]) < 1e-5,
           f"the returned loss is {loss_value:.4f}, cross-entropy of the batch is {key['loss']:.4f}: return "
           "criterion(model(x), y) computed before the step")
    expect(max_diff(logits, key["logits"]) < 1e-5,
           "the returned logits are not model(x) before the step: return the logits the loss was computed from")
    error = max(max_diff(a, b) for a, b in zip(after, key["after"]))
    expect(error < 1e-6, f"after one SGD step the weights differ from w - lr * grad by up to {error:.2g}: "
                         "zero_grad, forward, loss, backward, step, in that order")


@wrong_answer("p1-train.2", diagnosis="call optimizer.zero_grad() before loss.backward()")
def train_step_without_zero_grad(model, optimizer, criterion, x, y):
    """No zero_grad: every step adds this batch's gradient to all the earlier ones."""
    logits = model(x)
    loss = criterion(logits, y)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss.detach()


@wrong_answer("p1-train.2", diagnosis="softmax was applied before CrossEntropyLoss")
def train_step_softmax_before_loss(model, optimizer, criterion, x, y):
    """Probabilities fed to CrossEntropyLoss, which takes a log-softmax of its own: softmax twice."""
    optimizer.zero_grad()
    logits = model(x)
    loss = criterion(torch.softmax(logits, dim=1), y)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss.detach()


@wrong_answer("p1-train.2", diagnosis="optimizer.step() must come after loss.backward()")
def train_step_steps_before_backward(model, optimizer, criterion, x, y):
    """The step comes before backward: it uses whatever .grad held (nothing, after zero_grad)."""
    optimizer.zero_grad()
    logits = model(x)
    loss = criterion(logits, y)
    optimizer.step()
    loss.backward()
    return logits.detach(), loss.detach()


# --------------------------------------------------------------------------- p1-train.3 evaluation


class NoisyNet(nn.Module):
    """BatchNorm and dropout: a model whose outputs in train mode differ from eval mode's.

    It records, for each forward pass, whether it ran in train mode and whether autograd was recording.
    """

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.body(x)


def evaluation_setup():
    """A trained-looking NoisyNet, 9 examples in batches of 4, 4, 1, and labels with a known accuracy.

    The labels agree with the eval-mode predictions except for example 0 (first batch) and example 8 (the
    last batch, of one): accuracy over the set is 7/9, the mean of per-batch accuracies (3/4 + 1 + 0) / 3.
    """
    torch.manual_seed(0)
    model = NoisyNet()
    with torch.no_grad():   # give BatchNorm running statistics that are not the defaults
        for _ in range(5):
            model(torch.randn(32, 6) * 2 + 1)
    model.eval()
    x = torch.randn(9, 6)
    with torch.no_grad():
        predictions = model(x).argmax(1)
    y = predictions.clone()
    y[0], y[8] = (y[0] + 1) % 3, (y[8] + 1) % 3
    with torch.no_grad():
        loss = F.cross_entropy(model(x), y).item()
    model.train()   # as a training epoch leaves it
    model.calls.clear()
    return model, DataLoader(TensorDataset(x, y), batch_size=4), predictions, loss


def run_evaluate(model, loader):
    """``p1_train.evaluate`` on the CPU; BatchNorm refusing a one-example batch in train mode becomes a diagnosis."""
    try:
        return p1_train.evaluate(model, loader, torch.device("cpu"))
    except ValueError as exc:
        if "per channel when training" not in str(exc):
            raise
        expect(False, "BatchNorm refused the last batch (one example) because it ran in train mode: is the model "
                      "left in train mode? Call model.eval() first, so BatchNorm uses its running statistics")


@exercise("p1-train.3")
def test_evaluate_uses_eval_mode_and_no_gradients():
    model, loader, _, _ = evaluation_setup()
    running_mean = model.body[1].running_mean.clone()
    run_evaluate(model, loader)
    expect(model.calls, "evaluate never called the model")
    in_train_mode = sum(training for training, _ in model.calls)
    stats_moved = max_diff(model.body[1].running_mean, running_mean)
    expect(in_train_mode == 0 and stats_moved == 0,
           f"{in_train_mode} of {len(model.calls)} forward passes ran in train mode (BatchNorm's running mean "
           f"moved by {stats_moved:.3g}): is the model left in train mode? Call model.eval() first, so dropout "
           "stops dropping and BatchNorm uses its running statistics")
    with_graph = sum(grad for _, grad in model.calls)
    expect(with_graph == 0, f"{with_graph} of {len(model.calls)} forward passes recorded an autograd graph: wrap "
                            "the loop in torch.no_grad() (or torch.inference_mode()); evaluation needs no gradients")


@exercise("p1-train.3")
def test_evaluate_figures_are_over_the_whole_set():
    model, loader, expected_predictions, expected_loss = evaluation_setup()
    result = run_evaluate(model, loader)
    expect(isinstance(result, tuple) and len(result) == 3,
           f"evaluate should return (mean loss, accuracy, predictions), got {type(result).__name__}")
    loss, accuracy, predictions = result
    predictions = torch.as_tensor(predictions).flatten()
    expect(len(predictions) == 9, f"9 examples should give 9 predictions, got {len(predictions)}: concatenate "
                                  "every batch's argmax")
    expect(torch.equal(predictions.long(), expected_predictions),
           f"predictions {predictions.tolist()} differ from the eval-mode argmax {expected_predictions.tolist()}: "
           "is the model left in train mode (dropout still active)?")
    per_batch = (3 / 4 + 1 + 0) / 3
    if abs(float(accuracy) - per_batch) < 1e-6:
        expect(False, f"accuracy {float(accuracy):.4f} is the mean of per-batch accuracies; with batches of 4, 4 "
                      "and 1 the last one weighs four times too much. Count correct predictions over the whole "
                      "set and divide once: 7/9 = 0.7778")
    expect(abs(float(accuracy) - 7 / 9) < 1e-6, f"accuracy {float(accuracy):.4f}, expected 7/9 = 0.7778 (7 of 9 "
                                                "predictions match the labels)")
    expect(abs(float(loss) - expected_loss) < 1e-5,
           f"mean loss {float(loss):.5f}, expected {expected_loss:.5f} (cross-entropy averaged over the 9 examples): "
           "if it was averaged per batch, sum the per-example losses (reduction='sum') and divide by the count")


@wrong_answer("p1-train.3", diagnosis="is the model left in train mode?")
def evaluate_in_train_mode(model, loader, device):
    """No model.eval(): dropout keeps dropping and BatchNorm normalises with each batch's statistics."""
    total_loss, predictions, labels = 0.0, [], []
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device))
            total_loss += F.cross_entropy(logits, y.to(device), reduction="sum").item()
            predictions.append(logits.argmax(1).cpu())
            labels.append(y)
    predictions, labels = torch.cat(predictions), torch.cat(labels)
    return total_loss / len(labels), (predictions == labels).float().mean().item(), predictions


@wrong_answer("p1-train.3", diagnosis="mean of per-batch accuracies")
def evaluate_averaged_per_batch(model, loader, device):
    """Loss and accuracy averaged over batches: an uneven last batch gets the weight of a full one."""
    model.eval()
    losses, accuracies, predictions = [], [], []
    with torch.no_grad():
        for x, y in loader:
            logits = model(x.to(device))
            losses.append(F.cross_entropy(logits, y.to(device)).item())
            accuracies.append((logits.argmax(1).cpu() == y).float().mean().item())
            predictions.append(logits.argmax(1).cpu())
    return sum(losses) / len(losses), sum(accuracies) / len(accuracies), torch.cat(predictions)


@wrong_answer("p1-train.3", diagnosis="recorded an autograd graph")
def evaluate_with_gradients(model, loader, device):
    """Eval mode, but autograd still records a graph for every batch: slower, and memory for nothing."""
    model.eval()
    total_loss, predictions, labels = 0.0, [], []
    for x, y in loader:
        logits = model(x.to(device))
        total_loss += F.cross_entropy(logits, y.to(device), reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
        labels.append(y)
    predictions, labels = torch.cat(predictions), torch.cat(labels)
    return total_loss / len(labels), (predictions == labels).float().mean().item(), predictions


# --------------------------------------------------------------------------- p1-train.4 k-nearest neighbours


def knn_data(seed: int = 0, n_train: int = 80, n_test: int = 60, classes: int = 4, dims: int = 5):
    """Overlapping Gaussian blobs, one per class: neighbours disagree often enough for the vote to matter."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (classes, dims))
    train_y = rng.permutation(np.arange(n_train) % classes)
    test_y = rng.integers(0, classes, n_test)
    train_x = centres[train_y] + rng.normal(0.0, 1.0, (n_train, dims))
    test_x = centres[test_y] + rng.normal(0.0, 1.0, (n_test, dims))
    return train_x, train_y, test_x


def sklearn_knn(train_x, train_y, test_x, k: int) -> np.ndarray:
    """The answer key: scikit-learn's brute-force kNN (uniform votes; a tied vote goes to the smallest label)."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_x, train_y).predict(test_x)


def vote_ties_to_largest(train_x, train_y, test_x, k: int) -> np.ndarray:
    """The k nearest as scikit-learn finds them, but a tied vote given to the largest label."""
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train_x).kneighbors(test_x, return_distance=False)
    votes = np.stack([np.bincount(train_y[row], minlength=int(train_y.max()) + 1) for row in nearest])
    return votes.shape[1] - 1 - votes[:, ::-1].argmax(axis=1)


def run_knn(train_x, train_y, test_x, k: int) -> np.ndarray:
    got = baselines.knn_predict(train_x, train_y, test_x, k)
    expect(got is not None, "knn_predict returned None: return the array of predicted labels")
    got = np.asarray(got)
    expect(got.shape == (len(test_x),), f"{len(test_x)} test rows should give {len(test_x)} predictions, got shape "
                                        f"{got.shape}: one label per test row, from every batch")
    return got


def diagnose_knn(got, train_x, train_y, test_x, k: int) -> None:
    expected = sklearn_knn(train_x, train_y, test_x, k)
    wrong = int((got != expected).sum())
    if wrong == 0:
        return
    if np.array_equal(got, sklearn_knn(train_x, train_y, -test_x, k)):
        expect(False, f"{wrong} of {len(got)} predictions differ from scikit-learn's, and they are exactly the "
                      "neighbours of -test_x: the distance was ||a||^2 + 2 a.b + ||b||^2 = ||a + b||^2. The "
                      "-2 a.b term must be subtracted: ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2")
    if k > 1 and np.array_equal(got, sklearn_knn(train_x, train_y, test_x, 1)):
        expect(False, f"with k={k}, {wrong} of {len(got)} predictions differ, and every prediction is the label of "
                      "the single nearest neighbour: only the nearest one voted (k=1). Take the k nearest "
                      "(np.argpartition(d, k - 1, axis=1)[:, :k]) and let all k vote")
    if np.array_equal(got, vote_ties_to_largest(train_x, train_y, test_x, k)):
        expect(False, f"with k={k}, {wrong} of {len(got)} predictions differ, all where the vote was tied: the "
                      "ties go to the largest label. The rule is the smallest label (argmax over the counts "
                      "returns the first of equal maxima)")
    expect(False, f"with k={k}, {wrong} of {len(got)} predictions differ from scikit-learn's "
                  f"KNeighborsClassifier(n_neighbors={k}): squared distances ||a||^2 - 2 a.b + ||b||^2, the k "
                  "smallest per row, a majority vote with ties to the smallest label")


@exercise("p1-train.4")
def test_knn_predict_matches_scikit_learn():
    train_x, train_y, test_x = knn_data()
    for k in (3, 4, 1, 7):
        diagnose_knn(run_knn(train_x, train_y, test_x, k), train_x, train_y, test_x, k)


@exercise("p1-train.4")
def test_knn_predict_breaks_a_tied_vote_to_the_smallest_label():
    train_x = np.array([[0.9], [-2.1], [5.0], [-7.0]])
    train_y = np.array([1, 3, 0, 2])
    got = run_knn(train_x, train_y, np.array([[0.0]]), 2)
    expect(int(got[0]) != 3, "the two nearest neighbours of 0.0 are 0.9 (label 1) and -2.1 (label 3), one vote "
                             "each, and the prediction is 3: the ties go to the largest label. The rule is the "
                             "smallest label, 1 (argmax over the counts returns the first of equal maxima)")
    expect(int(got[0]) == 1, f"the two nearest neighbours of 0.0 are 0.9 (label 1) and -2.1 (label 3), one vote "
                             f"each; a tie goes to the smallest label, 1. Got {int(got[0])}")


@exercise("p1-train.4")
def test_knn_predict_covers_every_batch():
    train_x, train_y, test_x = knn_data(seed=1, n_test=2300)   # more rows than one batch of 1,000
    got = run_knn(train_x, train_y, test_x, 3)
    diagnose_knn(got, train_x, train_y, test_x, 3)


def _nearest(train_x, test_x, k, sign: float):
    d = (test_x ** 2).sum(1)[:, None] + sign * 2 * test_x @ train_x.T + (train_x ** 2).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _vote(train_y, nearest, largest: bool = False):
    votes = np.stack([np.bincount(train_y[row], minlength=int(train_y.max()) + 1) for row in nearest])
    return votes.shape[1] - 1 - votes[:, ::-1].argmax(1) if largest else votes.argmax(1)


@wrong_answer("p1-train.4", diagnosis="The -2 a.b term must be subtracted")
def knn_predict_plus_two_ab(train_x, train_y, test_x, k, batch_size=1000):
    """||a||^2 + 2 a.b + ||b||^2: the cross term added, so the 'nearest' are the nearest to -a."""
    return _vote(np.asarray(train_y), _nearest(np.asarray(train_x), np.asarray(test_x), k, +1.0))


@wrong_answer("p1-train.4", diagnosis="the ties go to the largest label")
def knn_predict_ties_to_largest(train_x, train_y, test_x, k, batch_size=1000):
    """A tied vote given to the largest label (argmax over the counts reversed)."""
    return _vote(np.asarray(train_y), _nearest(np.asarray(train_x), np.asarray(test_x), k, -1.0), largest=True)


@wrong_answer("p1-train.4", diagnosis="only the nearest one voted (k=1)")
def knn_predict_nearest_only(train_x, train_y, test_x, k, batch_size=1000):
    """The label of the single nearest neighbour, whatever k is."""
    return _vote(np.asarray(train_y), _nearest(np.asarray(train_x), np.asarray(test_x), 1, -1.0))


# --------------------------------------------------------------------------- p1-train.5 the cheapest model


def costs() -> dict:
    """Made-up figures, chosen so that each common mistake picks a different model than the right rule."""
    return {
        "majority class":   {"test_accuracy": 0.80, "ms_per_image": 0.0005, "size_bytes": 100},
        "linear, slower":   {"test_accuracy": 0.93, "ms_per_image": 0.004, "size_bytes": 31_400},
        "linear":           {"test_accuracy": 0.93, "ms_per_image": 0.002, "size_bytes": 31_400},
        "prototypes":       {"test_accuracy": 0.975, "ms_per_image": 3.0, "size_bytes": 200_000},
        "small net":        {"test_accuracy": 0.98, "ms_per_image": 0.01, "size_bytes": 407_000},
        "forest":           {"test_accuracy": 0.97, "ms_per_image": 0.08, "size_bytes": 144_000_000},
        "cnn":              {"test_accuracy": 0.99, "ms_per_image": 0.2, "size_bytes": 861_000},
        "big cnn":          {"test_accuracy": 0.995, "ms_per_image": 0.9, "size_bytes": 5_000_000},
    }


def ask(min_accuracy: float, max_ms_per_image: float | None = None):
    table = costs()
    limits = {} if max_ms_per_image is None else {"max_ms_per_image": max_ms_per_image}
    try:
        return baselines.cheapest_meeting(table, min_accuracy=min_accuracy, **limits)
    except ValueError as exc:
        expect(False, f"cheapest_meeting raised ValueError ({exc}) for >= {min_accuracy:.1%}: when no model meets "
                      "the requirement, return None (min() of an empty list raises)")


def describe(name) -> str:
    if name not in costs():
        return repr(name)
    r = costs()[name]
    return f"{name!r} ({r['test_accuracy']:.1%}, {r['ms_per_image']} ms/image, {r['size_bytes']:,} bytes)"


@exercise("p1-train.5")
def test_cheapest_meeting_picks_the_smallest_model_that_meets_both_limits():
    got = ask(0.97, 1.0)
    expect(got != "big cnn", f">= 97% at <= 1 ms/image gave {describe(got)}: the most accurate model, not the "
                             "cheapest. Among the models that meet the requirement, take the smallest")
    expect(got != "prototypes", f">= 97% at <= 1 ms/image gave {describe(got)}, which takes 3 ms per image: the "
                                "time limit was ignored. Keep only models with ms_per_image <= max_ms_per_image")
    expect(got == "small net", f">= 97% at <= 1 ms/image: expected 'small net' (the smallest of the four that meet "
                               f"it), got {describe(got)}")
    got = ask(0.97)
    expect(got == "prototypes", f">= 97% with no time limit: expected 'prototypes' (200,000 bytes), got "
                                f"{describe(got)}")


@exercise("p1-train.5")
def test_cheapest_meeting_breaks_a_size_tie_by_speed():
    got = ask(0.92, 0.01)
    expect(got != "linear, slower", ">= 92% at <= 0.01 ms/image: two models of 31,400 bytes meet it and the "
                                    "slower one came back: ties in size are not broken by prediction time. Sort "
                                    "by (size_bytes, ms_per_image)")
    expect(got == "linear", f">= 92% at <= 0.01 ms/image: expected 'linear' (31,400 bytes, the faster of two "
                            f"equal sizes), got {describe(got)}")


@exercise("p1-train.5")
def test_cheapest_meeting_includes_its_limits_and_may_find_nothing():
    got = ask(0.99, 0.2)
    expect(got == "cnn", f">= 99% at <= 0.2 ms/image: 'cnn' is exactly 99% at exactly 0.2 ms and meets it, got "
                         f"{describe(got)}: the limits are included (>= and <=, not > and <)")
    got = ask(0.999)
    expect(got is None, f">= 99.9%: no model meets it, so the answer is None; got {describe(got)}")


@wrong_answer("p1-train.5", diagnosis="the most accurate model, not the cheapest")
def cheapest_meeting_most_accurate(results, *, min_accuracy, max_ms_per_image=float("inf")):
    """The most accurate of the models that meet the requirement."""
    meeting = [n for n, r in results.items()
               if r["test_accuracy"] >= min_accuracy and r["ms_per_image"] <= max_ms_per_image]
    return max(meeting, key=lambda n: results[n]["test_accuracy"]) if meeting else None


@wrong_answer("p1-train.5", diagnosis="the time limit was ignored")
def cheapest_meeting_ignores_time(results, *, min_accuracy, max_ms_per_image=float("inf")):
    """Only the accuracy is checked."""
    meeting = [n for n, r in results.items() if r["test_accuracy"] >= min_accuracy]
    return min(meeting, key=lambda n: (results[n]["size_bytes"], results[n]["ms_per_image"])) if meeting else None


@wrong_answer("p1-train.5", diagnosis="ties in size are not broken by prediction time")
def cheapest_meeting_size_only(results, *, min_accuracy, max_ms_per_image=float("inf")):
    """The smallest, but of two equal sizes whichever comes first."""
    meeting = [n for n, r in results.items()
               if r["test_accuracy"] >= min_accuracy and r["ms_per_image"] <= max_ms_per_image]
    return min(meeting, key=lambda n: results[n]["size_bytes"]) if meeting else None


@wrong_answer("p1-train.5", diagnosis="the limits are included")
def cheapest_meeting_strict_limits(results, *, min_accuracy, max_ms_per_image=float("inf")):
    """> and < instead of >= and <=: a model exactly at the limit is turned away."""
    meeting = [n for n, r in results.items()
               if r["test_accuracy"] > min_accuracy and r["ms_per_image"] < max_ms_per_image]
    return min(meeting, key=lambda n: (results[n]["size_bytes"], results[n]["ms_per_image"])) if meeting else None


@wrong_answer("p1-train.5", diagnosis="return None")
def cheapest_meeting_raises_when_none_meets(results, *, min_accuracy, max_ms_per_image=float("inf")):
    """min() over an empty list: ValueError when no model meets the requirement."""
    meeting = [n for n, r in results.items()
               if r["test_accuracy"] >= min_accuracy and r["ms_per_image"] <= max_ms_per_image]
    return min(meeting, key=lambda n: (results[n]["size_bytes"], results[n]["ms_per_image"]))
