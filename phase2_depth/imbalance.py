"""Accuracy alone is a lie: one class made rare, and the figures that notice.

CIFAR-10 is balanced: every class is a tenth of the training images and a
tenth of the test images, so accuracy, macro F1 and weighted F1 tell the same
story (day 33).  Real data rarely is: fraud among payments, a defect on a
production line, a disease among scans.  This lesson makes one class rare in
the training split and watches what each figure says.

1. **The imbalanced split** (:func:`make_rare`): the cats are cut to 5% of
   their training images, 225 of 4,500; every other class stays whole.  Cat
   is the class the model already finds hardest, and dog, its look-alike,
   stays plentiful: the case where rarity hurts most.  Validation and test
   stay balanced: they describe the world the model will be judged in, not
   the data it happened to get.
2. **Three models, one recipe** (:func:`train`): the narrow CNN, p2-cnn's
   ``ci`` recipe (3 epochs), trained on the balanced split (the reference),
   on the imbalanced split as it is (plain), and on the imbalanced split
   with the fix, **resampling** (:func:`oversample`): every image is
   repeated in proportion to its class's inverse-frequency weight
   (:func:`class_weights`), so each cat appears 20 times per epoch, each
   time under a different random crop and flip, and a batch holds about as
   many cats as dogs.  The other common fix, class-weighted
   cross-entropy (the same weights multiplied into each image's loss), was
   measured too and did worse on every figure: with 0.7 cats per batch on
   average (half the batches hold none), each carrying 20 times the weight
   of any other image, the gradient jumps from batch to batch; resampling
   gives the same average push with a dozen cats in every batch
   (``phase2_depth/README.md`` has both).
3. **What the figures say**: the accuracy falls by a few points, the kind of
   change a shorter training run makes; the cat recall goes to nothing.  On
   a test set with the training split's class mix, the accuracy would even
   *rise*.  Macro F1 shows some of it, the per-class recall
   (``imbalance.png``) all of it.  The fix brings most cats back, at a
   price: images of other classes are now taken for cats.
4. **The rare class as a detection problem**: "is it a cat?" answered by
   the softmax probability of cat and a threshold.  The precision-recall
   curve (``pr_curve.png``) and its average precision judge the *ranking*,
   whatever the threshold; the threshold is then chosen for a stated cost
   (a missed cat costs 5, a false alarm 1) on the validation split, and
   its precision, recall and cost reported on the test split once.  The
   plain model's argmax never says cat, but its probabilities still rank
   cats above most other images: a low threshold recovers much of what the
   argmax threw away, without retraining.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from common.data import Split
from common.loaders import TensorLoader
from common.trainer import TrainConfig
from phase2_depth import evaluation
from phase2_depth.data import AUGMENT
from phase2_depth.p2_cnn import RECIPES, CnnTrainer, build_model

RARE_CLASS = "cat"
KEEP_FRACTION = 0.05
COST_MISS, COST_FALSE_ALARM = 5.0, 1.0
# p2-cnn's "ci" recipe: the narrow CNN, 3 epochs, batch 128, one-cycle SGD, label smoothing; 2.3-3.1 minutes a model
# on a shared 2-core CPU (phase2_depth/README.md).  Quick mode: one epoch of the "quick" recipe on the quick run's
# 1,000 images, a second or so a model.
RECIPE = dict(RECIPES["ci"])
QUICK_RECIPE = {**{k: v for k, v in RECIPES["quick"].items() if k != "subset"}, "epochs": 1}
MODELS = ("balanced", "plain", "resampled")
LABELS = {"balanced": "balanced (reference)", "plain": "imbalanced, plain", "resampled": "imbalanced, resampled"}
COLORS = {"balanced": "#888888", "plain": "#c44e52", "resampled": "#4c72b0"}


def make_rare(split: Split, class_index: int, keep_fraction: float, seed: int = 0) -> Split:
    """``split`` with only a seeded ``keep_fraction`` of class ``class_index``'s images; every other image kept.

    The kept images are a random draw (seeded, so every run drops the same
    ones), not the first ones: files are often ordered.  At least one image
    of the class is kept.  The order of the remaining images is unchanged.
    """
    labels = split.labels
    members = torch.nonzero(labels == class_index).flatten()
    keep = max(1, round(keep_fraction * len(members)))
    generator = torch.Generator().manual_seed(seed)
    kept = members[torch.randperm(len(members), generator=generator)[:keep]]
    mask = labels != class_index
    mask[kept] = True
    return Split(split.images[mask], labels[mask])


def class_weights(counts) -> np.ndarray:
    """Inverse-frequency class weights, scaled so that their mean is 1.

    Class ``k`` with ``n_k`` training images gets a weight proportional to
    ``1 / n_k``, so that every class carries the same total weight
    (``n_k * w_k`` is the same for all ``k``), however few images it has.
    Two ways to use them: as how often each image is shown
    (:func:`oversample`, this lesson's fix), or multiplied into each image's
    loss (``nn.CrossEntropyLoss(weight=...)``, the other fix).  Dividing by
    the mean weight makes the numbers readable (1 is an average class, 6.9 a
    class 20 times rarer than the nine others); neither use depends on the
    scale.  Every count must be positive.

    Example: counts ``[100, 100, 25, 100]`` -> ``[0.571, 0.571, 2.286, 0.571]``.
    """
    # EXERCISE p2-eval.7: inverse-frequency class weights
    # hint: one over each count, then divide by the mean of those so that the weights average 1
    inverse = 1.0 / np.asarray(counts, dtype=np.float64)
    return inverse / inverse.mean()
    # END EXERCISE


def oversample(split: Split, weights: np.ndarray) -> Split:
    """``split`` with each image repeated ``round(weight of its class / smallest weight)`` times.

    With inverse-frequency weights (:func:`class_weights`) every class ends
    up with about as many images as the largest: 225 cats, each 20 times,
    give 4,500.  The copies are the same pixels, but the training loader
    crops and flips every one of them differently, and its shuffle spreads
    them over the epoch.  The originals come first, in order, then the
    extra copies.
    """
    weights = np.asarray(weights, dtype=np.float64)
    repeats = torch.as_tensor(np.rint(weights / weights.min()).astype(np.int64))[split.labels]
    index = torch.repeat_interleave(torch.arange(len(split)), repeats - 1)
    index = torch.cat([torch.arange(len(split)), index])
    return Split(split.images[index], split.labels[index])


def train(train_split: Split, splits, recipe: dict, *, seed: int = 0,
          device: torch.device | str = "cpu") -> tuple[CnnTrainer, float]:
    """The narrow CNN trained on ``train_split`` with ``recipe``.

    p2-cnn's trainer and optimiser (SGD, Nesterov, one-cycle learning rate,
    weight decay on weights only, label smoothing), crop-and-flip
    augmentation, no validation during training (the lesson reads the
    validation split once, afterwards).  All three models share the seed (the
    same initial weights) and the normalisation of the full training split:
    what differs is the data.  Returns the trainer (its ``raw_model`` is the
    model) and the training time in minutes.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(recipe, num_classes=len(splits.classes))
    channels_last = device.type in ("cpu", "cuda")
    loader = TensorLoader(train_split, recipe["batch_size"], device=device, mean=splits.mean, std=splits.std,
                          augment=AUGMENT, seed=seed, drop_last=True, channels_last=channels_last)
    config = TrainConfig(epochs=recipe["epochs"], optimizer="sgd", lr=recipe["lr"], momentum=0.9, nesterov=True,
                         weight_decay=recipe["weight_decay"], schedule="onecycle",
                         label_smoothing=recipe["label_smoothing"], channels_last=channels_last, seed=seed)
    trainer = CnnTrainer(model, config, device=device, progress=False, announce=lambda line: print("    " + line))
    start = time.perf_counter()
    trainer.fit(loader)
    return trainer, (time.perf_counter() - start) / 60


def probabilities(trainer: CnnTrainer, split: Split, splits) -> np.ndarray:
    """Softmax probabilities ``(len(split), classes)`` of every image of ``split``, in order, in eval mode.

    The trainer's own ``predict`` (eval mode, no graph, the training
    normalisation): plain, without p2-eval's flip averaging, which would
    double the cost for figures this lesson does not need.
    """
    loader = TensorLoader(split, 1000, device=trainer.device, mean=splits.mean, std=splits.std, shuffle=False)
    logits, _ = trainer.predict(loader)
    return torch.softmax(logits, dim=1).numpy()


def model_figures(labels: np.ndarray, probs: np.ndarray, classes: list[str], rare: int,
                  train_counts: list[int]) -> dict:
    """One model's test figures: accuracy, macro F1, per-class recall, the rare class's precision and recall.

    Everything comes from the confusion matrix (:func:`evaluation.confusion_matrix`)
    and its per-class scores (:func:`evaluation.class_scores`).  One extra
    figure: ``accuracy_at_training_mix``, the accuracy on a test set with the
    training split's class shares (``sum_k share_k * recall_k``): what the
    accuracy would say if the world were as imbalanced as the training data.
    """
    matrix = evaluation.confusion_matrix(labels, probs.argmax(axis=1), len(classes))
    per_class = evaluation.class_scores(matrix)
    shares = np.asarray(train_counts, dtype=np.float64) / np.sum(train_counts)
    return {"accuracy": float(np.trace(matrix) / matrix.sum()), "macro_f1": per_class["macro"]["f1"],
            "accuracy_at_training_mix": float(np.sum(shares * per_class["recall"])),
            "recall": {c: float(per_class["recall"][i]) for i, c in enumerate(classes)},
            "precision": {c: float(per_class["precision"][i]) for i, c in enumerate(classes)},
            "rare_recall": float(per_class["recall"][rare]), "rare_precision": float(per_class["precision"][rare]),
            "rare_f1": float(per_class["f1"][rare]), "rare_predicted": int(matrix[:, rare].sum()),
            "rare_test_images": int(matrix[rare].sum()),
            "confusion_matrix": matrix.tolist()}


def detection(val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray, test_probs: np.ndarray,
              rare: int, cost_miss: float = COST_MISS, cost_false_alarm: float = COST_FALSE_ALARM) -> dict:
    """The rare class as a detection problem: curve and AP on test, threshold chosen on validation, tested once.

    The score of an image is the model's softmax probability of the rare
    class.  The threshold comes from :func:`evaluation.threshold_for_cost`
    on the validation split alone; the test split then gives its precision,
    recall and cost, beside those of the argmax rule (flag an image when
    the rare class is the model's top answer).  Costs per image are
    comparable across splits of different sizes.
    """
    val_positive, test_positive = val_labels == rare, test_labels == rare
    threshold = evaluation.threshold_for_cost(val_positive, val_probs[:, rare], cost_miss, cost_false_alarm)
    precision, recall, thresholds = evaluation.precision_recall_curve(test_positive, test_probs[:, rare])
    costs = dict(cost_miss=cost_miss, cost_false_alarm=cost_false_alarm)
    return {"average_precision": evaluation.average_precision(precision, recall),
            "threshold": threshold,
            "validation": evaluation.detection_scores(val_positive, val_probs[:, rare] >= threshold, **costs),
            "test": evaluation.detection_scores(test_positive, test_probs[:, rare] >= threshold, **costs),
            "test_argmax": evaluation.detection_scores(test_positive, test_probs.argmax(axis=1) == rare, **costs),
            "curve": {"precision": precision, "recall": recall, "thresholds": thresholds}}


def lesson(splits, *, device, seed: int = 0, quick: bool = False, run_dir=None) -> dict:
    """The whole lesson: the split, three trainings, the table, the detection figures, the two pictures.

    ``splits`` are p2-eval's (:func:`phase2_depth.data.cifar_splits`); the
    pictures go to ``run_dir``.  Returns the figures that go under
    ``"imbalance"`` in ``metrics.json``.
    """
    start = time.perf_counter()
    classes = list(splits.classes)
    rare = classes.index(RARE_CLASS) if RARE_CLASS in classes else len(classes) // 2   # stand-in, own image folders
    recipe = QUICK_RECIPE if quick else RECIPE
    imbalanced = make_rare(splits.train, rare, KEEP_FRACTION, seed)
    weights = class_weights(imbalanced.class_counts(len(classes)))
    train_splits = {"balanced": splits.train, "plain": imbalanced, "resampled": oversample(imbalanced, weights)}
    counts = {name: split.class_counts(len(classes)) for name, split in train_splits.items()}
    repeats = int(np.rint(weights[rare] / weights.min()))
    print(f"\n-- Accuracy alone is a lie: {classes[rare]} cut to {100 * KEEP_FRACTION:.0f}% of its training images "
          f"({counts['plain'][rare]:,} of {counts['balanced'][rare]:,}), every other class whole; validation and "
          f"test untouched --")
    print(f"  three narrow CNNs, {recipe['epochs']} epoch{'s' if recipe['epochs'] > 1 else ''} each; the fix: "
          f"resampling, each {classes[rare]} image shown {repeats} times per epoch (class weights "
          f"{weights[rare]:.2f} for {classes[rare]}, {np.delete(weights, rare).mean():.2f} for the others)")

    val_labels, test_labels = splits.val.labels.numpy(), splits.test.labels.numpy()
    models, detections = {}, {}
    for name in MODELS:
        print(f"  [{name}] {LABELS[name]}: {sum(counts[name]):,} training images per epoch")
        trainer, minutes = train(train_splits[name], splits, recipe, seed=seed, device=device)
        val_probs = probabilities(trainer, splits.val, splits)
        test_probs = probabilities(trainer, splits.test, splits)
        models[name] = model_figures(test_labels, test_probs, classes, rare, counts["plain"])
        models[name].update(train_images=sum(counts[name]), training_minutes=minutes)
        detections[name] = detection(val_labels, val_probs, test_labels, test_probs, rare)
        models[name]["average_precision"] = detections[name]["average_precision"]

    print(table_text(models, classes[rare]))
    print(f"\n-- {classes[rare]} as a detection problem: a missed {classes[rare]} costs {COST_MISS:g}, a false alarm "
          f"{COST_FALSE_ALARM:g}; threshold chosen on validation, tested once --")
    print(detection_text(detections))
    if run_dir is not None:
        plot_recalls(models, classes, rare, run_dir / "imbalance.png")
        plot_pr_curves(detections, classes[rare], run_dir / "pr_curve.png")
    seconds = time.perf_counter() - start
    took = f"{seconds / 60:.1f} minutes" if seconds >= 60 else f"{seconds:.0f} s"
    print(f"  ({took} for the section)")
    for d in detections.values():
        d.pop("curve")
    return {"rare_class": classes[rare], "keep_fraction": KEEP_FRACTION, "recipe": recipe,
            "train_counts": counts["plain"], "balanced_train_counts": counts["balanced"],
            "resampled_train_counts": counts["resampled"], "fix": "resampling", "class_weights": weights.tolist(),
            "rare_repeats": repeats,
            "cost_miss": COST_MISS, "cost_false_alarm": COST_FALSE_ALARM,
            "models": models, "detection": detections, "minutes": seconds / 60}


def table_text(models: dict, rare_name: str) -> str:
    head = (f"  {'model':<27} {'train images':>12} {'accuracy':>9} {'at train mix':>12} {'macro F1':>9} "
            f"{rare_name + ' recall':>12} {rare_name + ' precision':>15} {rare_name + ' AP':>8}")
    lines = [head]
    for name, m in models.items():
        lines.append(f"  {LABELS[name]:<27} {m['train_images']:>12,} {100 * m['accuracy']:>8.2f}% "
                     f"{100 * m['accuracy_at_training_mix']:>11.2f}% {m['macro_f1']:>9.3f} "
                     f"{100 * m['rare_recall']:>11.1f}% {100 * m['rare_precision']:>14.1f}% "
                     f"{m['average_precision']:>8.3f}")
    return "\n".join(lines)


def threshold_rule(threshold: float) -> str:
    """The chosen rule in words.  ``inf`` is a real outcome of :func:`evaluation.threshold_for_cost`: on the
    validation split no threshold paid for its false alarms, so the cheapest rule there flags nothing."""
    if threshold == float("inf"):
        return "flag nothing (cheapest)"
    return f"probability >= {threshold:.3f}"


def detection_text(detections: dict) -> str:
    lines = [f"  {'model':<27} {'rule':<26} {'precision':>9} {'recall':>7} {'misses':>6} {'alarms':>6} "
             f"{'cost/image':>10}"]
    for name, d in detections.items():
        for rule, figures in (("argmax", d["test_argmax"]), (threshold_rule(d["threshold"]), d["test"])):
            lines.append(f"  {LABELS[name]:<27} {rule:<26} {100 * figures['precision']:>8.1f}% "
                         f"{100 * figures['recall']:>6.1f}% {figures['misses']:>6} {figures['false_alarms']:>6} "
                         f"{figures['cost_per_image']:>10.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pictures


def plot_recalls(models: dict, classes: list[str], rare: int, path) -> None:
    """Per-class test recall, one bar per model: balanced, imbalanced, fixed."""
    import matplotlib.pyplot as plt

    from common.plots import save

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(models)
    x = np.arange(len(classes))
    for i, (name, m) in enumerate(models.items()):
        ax.bar(x + (i - (len(models) - 1) / 2) * width, [100 * m["recall"][c] for c in classes], width,
               color=COLORS[name], label=f"{LABELS[name]}: accuracy {100 * m['accuracy']:.1f}%, "
                                         f"{classes[rare]} {100 * m['rare_recall']:.0f}%")
    ax.axvspan(rare - 0.5, rare + 0.5, color="#f2d96b", alpha=0.3, zorder=0)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_yticks(range(0, 101, 20))
    ax.set(ylabel="test recall (%)", ylim=(0, 122),
           title=f"Per-class recall: {classes[rare]} at {100 * KEEP_FRACTION:.0f}% of its training images")
    ax.legend(loc="upper center", ncol=len(models), fontsize=7.5, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)


def plot_pr_curves(detections: dict, rare_name: str, path) -> None:
    """Each model's precision-recall curve for the rare class (test split), its chosen threshold marked."""
    import matplotlib.pyplot as plt

    from common.plots import save

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, d in detections.items():
        curve, chosen = d["curve"], d["test"]
        style = dict(lw=1, ls="--") if name == "balanced" else dict(lw=2)
        ax.step(curve["recall"], curve["precision"], where="post", color=COLORS[name], **style,
                label=f"{LABELS[name]} (AP {d['average_precision']:.2f})")
        if name != "balanced":
            ax.plot(chosen["recall"], chosen["precision"], "o", color=COLORS[name], ms=8, mec="black")
            rule = f"P({rare_name}) >= {d['threshold']:.3f}" if np.isfinite(d["threshold"]) else "flag nothing"
            ax.annotate(rule, (chosen["recall"], chosen["precision"]), textcoords="offset points", xytext=(-8, -14),
                        ha="right", fontsize=8, color=COLORS[name])
            argmax = d["test_argmax"]
            ax.plot(argmax["recall"], argmax["precision"], "x", color=COLORS[name], ms=8, mew=2)
    ax.plot([], [], "o", color="white", mec="black", label="threshold chosen on validation (cost 5:1)")
    ax.plot([], [], "x", color="black", label="argmax (the default rule)")
    ax.set(xlabel=f"recall ({rare_name} found)", ylabel=f"precision (of those flagged, {rare_name})",
           xlim=(0, 1), ylim=(0, 1.02), title=f"Is it a {rare_name}? Test precision-recall curves")
    ax.legend(loc="upper right", fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)
