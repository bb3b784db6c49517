"""p3-onnx (days 41-45): export the phase 2 CNN to ONNX, prove it computes the same thing, make it fast.

What to take from it:

1. **Export** with ``torch.onnx.export``: opset 18, a dynamic batch axis (one
   file serves batch 1 and batch 64), checked by ``onnx.checker``.
2. **The file describes itself**: class names, input shape, normalisation
   and the source checkpoint's sha256 live in the model's metadata, and
   ``manifest.json`` beside it records each ONNX file's own sha256, which the
   service (p3-serve) verifies before it loads anything.
3. **Parity, or it did not happen**: on 1,000 real test images the PyTorch
   and ONNX Runtime logits must agree to 1e-4 and every predicted class must
   match.  A failed parity check fails the milestone.
4. **INT8**: static quantization (QDQ, per-channel weights, calibrated on
   training images) against dynamic quantization, with accuracy and size.
5. **A fair benchmark**: PyTorch eager, TorchScript, ONNX Runtime fp32 and
   INT8, batch 1/8/64, one thread and all threads, interleaved in rounds;
   mean/p50/p95/p99, images/s, speedups as medians of per-round ratios.

Run: ``make p3-onnx`` (after ``make p2-cnn``).  Writes ``runs/p3-onnx/``:
``model.onnx``, ``model.int8.onnx``, ``model.int8_dynamic.onnx``,
``manifest.json``, ``benchmark.json`` / ``benchmark.md`` / ``latency.png``,
``metrics.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.augment import normalize
from common.benchmark import environment_stamp, save_result, usable_cores
from common.runs import describe_run, finished, read_metrics, run_path, write_json
from common.script import finish_run, is_full_real_run, milestone_parser, speed_figure, start_run
from phase2_depth.data import add_dataset_argument, cifar_splits
from phase2_depth.p2_cnn import load_model, require_same_classes
from phase3_production.inference_benchmark import BASELINE, build_engines, markdown_table, plot_latencies, run_grid
from phase3_production.inference_benchmark import accuracy as engine_accuracy
from phase3_production.onnx_export import add_reference, add_side_file, add_variant, export_onnx, parity, verify_onnx
from phase3_production.runtime import onnx_session
from phase3_production.quantize import quantize_dynamic_int8, quantize_static_int8

MILESTONE = "p3-onnx"
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 1000
CALIBRATION_IMAGES = 512          # from the training split, never the test split
BATCH_SIZES = (1, 8, 64)
# Targets for a full run on a 2-core CPU, batch 1, one thread (medians of interleaved rounds).
TARGETS = {"ort_fp32_vs_eager": 2.5, "int8_vs_fp32": 1.3, "int8_accuracy_loss_points": 0.5, "int8_size_ratio": 3.5}
# A quick run's model is barely trained (35-40% accuracy) and scored on 1,000 images: one image is 0.1
# points, and many of its answers sit near a decision boundary, where INT8's rounding flips them (2.4
# points for the quick CPU recipe's model). A broken quantizer loses tens of points (down to chance,
# 10%); 5 points catches that without failing on an undertrained model's flips.
QUICK_INT8_ACCURACY_LOSS_POINTS = 5.0
# The reference machine (2-core AMD EPYC, benchmarks/results/p3_onnx.json): what `make progress` shows beside a run.
REFERENCE_MACHINE = {"ort_fp32_vs_eager_mean": 2.37, "ort_fp32_vs_eager_p95": 2.39, "int8_vs_fp32_mean": 2.73}


def p2_cnn_model(*, quick: bool) -> Path:
    """The p2-cnn model this run exports; without one, stop with the command to run first.

    A full run exports the full p2-cnn model only: its figures go in the
    README, and a quick model would put a minutes-long training's accuracy
    there.  A quick run takes the full model when there is one (a learner who
    trained for half an hour wants that one exported), else the quick one.
    """
    full, quick_run = run_path("p2-cnn"), run_path("p2-cnn", quick=True)
    if finished(full):
        return full / "model.pt"
    if quick and finished(quick_run):
        return quick_run / "model.pt"
    if quick:
        raise SystemExit(f"p3-onnx needs a trained p2-cnn model, and {full}/ and {quick_run}/ hold no finished run: "
                         "run `make p2-cnn QUICK=1` first (about a minute), then `make p3-onnx QUICK=1`")
    found = f"only a quick run ({quick_run}/)" if finished(quick_run) else "no finished run"
    raise SystemExit(f"p3-onnx exports the full p2-cnn model, and {full}/ holds {found}: run `make p2-cnn` first "
                     "(about 33 minutes on 2 cores), or `make p3-onnx QUICK=1` to export the quick model")


def require_model_fits_data(checkpoint: Path, blob: dict, classes: list[str], *, quick: bool) -> None:
    """The model's classes are the data's, or one line that says which data the model wants.

    The usual way to get here: ``make p2-cnn QUICK=1 DATA_DIR=...`` trained
    on real CIFAR-10, then ``make p3-onnx QUICK=1`` without ``DATA_DIR``
    loaded the offline stand-in (or the other way round).
    """
    try:
        require_same_classes(checkpoint, blob, classes)
    except ValueError:
        trained = read_metrics(checkpoint.parent).get("data", {}) if (checkpoint.parent / "metrics.json").is_file() else {}
        where = f" ({trained['source']})" if trained.get("source") else ""
        flag = " QUICK=1" if quick else ""
        if trained.get("real_data", True):
            data, advice = "real data", f"run `make p3-onnx{flag} DATA_DIR=<the folder it was read from>`"
        else:
            data, advice = "the offline stand-in data", f"run `make p3-onnx{flag}` without DATA_DIR, as it was trained"
        raise SystemExit(f"{checkpoint} was trained on {data}{where}, classes {list(blob['classes'])[:3]}..., but this "
                         f"run loaded classes {list(classes)[:3]}...: {advice}, or train p2-cnn again on this data") from None


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--checkpoint", default=None, help="p2-cnn model file (default: the full p2-cnn run's model.pt, else the quick run's)")
    parser.add_argument("--rounds", type=int, default=None, help="benchmark rounds (default 7; quick 2)")
    parser.add_argument("--accuracy-images", type=int, default=None,
                        help="score each engine on this many test images (default: all; quick: 1,000)")
    parser.add_argument("--ort-spinning", action="store_true",
                        help="let ONNX Runtime's threads busy-wait between calls (its default; off here)")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    checkpoint = Path(args.checkpoint) if args.checkpoint else p2_cnn_model(quick=args.quick)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    print(f"  the model: {describe_run(checkpoint.parent)}")
    model, blob = load_model(checkpoint)
    # The data first: a model that does not fit it must fail before a previous good export is overwritten.
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=(1000, 500, PARITY_IMAGES) if args.quick else None)
    require_model_fits_data(checkpoint, blob, splits.classes, quick=args.quick)
    print(f"\n-- 1. Export {checkpoint} (widths {blob['arch']['widths']}) to ONNX, opset 18, dynamic batch --")
    manifest = export_onnx(model, blob, checkpoint, run_dir)
    verify_onnx(run_dir / "model.onnx")
    print(f"  {manifest['onnx_file']}: {manifest['bytes'] / 1e6:.2f} MB, sha256 {manifest['sha256'][:16]}..., "
          "checked by onnx.checker and against manifest.json")

    test = splits.test.subset(PARITY_IMAGES, seed=args.seed)
    x = normalize(test.images, blob["mean"], blob["std"]).numpy()  # the training normalisation
    print(f"\n-- 2. Parity on {len(x):,} test images: PyTorch eager vs ONNX Runtime (CPU, all optimisations) --")
    result = parity(model, onnx_session(run_dir / "model.onnx"), x)
    passed = result["max_abs_diff"] <= PARITY_TOLERANCE and result["same_class"] == len(x)
    print(f"  max |logit difference| {result['max_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}); "
          f"same class for {result['same_class']:,}/{len(x):,} images")
    if not passed:
        raise SystemExit(f"PARITY FAILED: max |diff| {result['max_abs_diff']:.2e}, "
                         f"{len(x) - result['same_class']} images classified differently")

    n_calibration = 128 if args.quick else CALIBRATION_IMAGES
    calibration = splits.train.subset(min(n_calibration, len(splits.train.labels)), seed=args.seed)
    print(f"\n-- 3. INT8: static (QDQ, per-channel, calibrated on {len(calibration.labels)} training images) "
          "and dynamic --")
    files = {"fp32": run_dir / "model.onnx", "int8": run_dir / "model.int8.onnx",
             "int8_dynamic": run_dir / "model.int8_dynamic.onnx"}
    static_info = quantize_static_int8(files["fp32"], files["int8"],
                                       normalize(calibration.images, blob["mean"], blob["std"]).numpy())
    dynamic_info = quantize_dynamic_int8(files["fp32"], files["int8_dynamic"])
    for key, info in (("int8", static_info), ("int8_dynamic", dynamic_info)):
        manifest = add_variant(run_dir / "manifest.json", key, files[key], quantization=info)
        verify_onnx(files[key])
    write_drift_reference(run_dir, splits, blob, quick=args.quick, seed=args.seed)
    manifest = write_demo_samples(run_dir, splits)
    sizes = {key: path.stat().st_size for key, path in files.items()}
    for key, size in sizes.items():
        print(f"  {files[key].name:<26} {size / 1e6:6.2f} MB  ({sizes['fp32'] / size:.2f}x smaller than fp32)")

    engines = build_engines(model, checkpoint, files, ort_spinning=args.ort_spinning)
    scored = test if args.quick else splits.test
    if args.accuracy_images:
        scored = splits.test.subset(args.accuracy_images, seed=args.seed)
    x_scored = normalize(scored.images, blob["mean"], blob["std"]).numpy()
    print(f"\n-- 4. Test accuracy of every engine on {len(x_scored):,} test images --")
    accuracy = {}
    for engine in engines:
        accuracy[engine.name] = engine_accuracy(engine.make_runner(usable_cores()), x_scored, scored.labels.numpy())
        print(f"  {engine.name:<22} {100 * accuracy[engine.name]:6.2f}%   {engine.description}")
    int8_loss_points = 100 * (accuracy["ort_fp32"] - accuracy["ort_int8"])

    rounds = args.rounds or (2 if args.quick else 7)
    repeats = {1: 10, 8: 4, 64: 2} if args.quick else {1: 100, 8: 25, 64: 6}
    print(f"\n-- 5. Latency, interleaved: {len(engines)} engines, batch {'/'.join(map(str, BATCH_SIZES))}, "
          f"1 thread and all threads, {rounds} rounds --")
    grid = run_grid(engines, x, batch_sizes=BATCH_SIZES, thread_counts=(1, None), rounds=rounds, repeats=repeats)
    rows = grid.rows()
    bytes_by_engine = {e.name: e.model_bytes for e in engines}
    for row in rows:
        row["test_accuracy"], row["model_bytes"] = accuracy[row["engine"]], bytes_by_engine[row["engine"]]
    table = markdown_table(rows)
    print(table)
    one = grid.cells[(1, 1)]
    targets = {
        "ort_fp32_vs_eager_mean": one.speedup(BASELINE, "ort_fp32", "mean_ms"),
        "ort_fp32_vs_eager_p95": one.speedup(BASELINE, "ort_fp32", "p95_ms"),
        "int8_vs_fp32_mean": one.speedup("ort_fp32", "ort_int8", "mean_ms"),
        "int8_vs_fp32_p95": one.speedup("ort_fp32", "ort_int8", "p95_ms"),
        "int8_dynamic_vs_fp32_mean": one.speedup("ort_fp32", "ort_int8_dynamic", "mean_ms"),
        "int8_accuracy_loss_points": int8_loss_points,
        "int8_size_ratio": sizes["fp32"] / sizes["int8"],
    }
    environment = environment_stamp()
    benchmark = {"rows": rows, "targets_batch1_one_thread": targets, "rounds": rounds, "repeats": repeats,
                 "ort_spinning": args.ort_spinning,
                 "engines": {e.name: e.description for e in engines},
                 "cells": {f"threads{t}_batch{b}": c.to_dict() for (t, b), c in grid.cells.items()}}
    write_json(run_dir / "benchmark.json", {"environment": environment, **benchmark})
    (run_dir / "benchmark.md").write_text(f"{table}\n\nEnvironment: {environment['cpu']}, "
                                          f"{environment['usable_cores']} cores, torch {environment['torch']}, "
                                          f"onnxruntime {environment['onnxruntime']}\n")
    plot_latencies(grid, run_dir / "latency.png")
    manifest, card = write_model_card(run_dir, checkpoint, model, splits, scored, blob, accuracy, targets,
                                      environment, seed=args.seed)
    card = card["evaluation"]
    print(f"\n  batch 1, one thread (medians of per-round ratios): ONNX Runtime fp32 "
          f"{targets['ort_fp32_vs_eager_mean']:.2f}x eager on the mean, {targets['ort_fp32_vs_eager_p95']:.2f}x on p95;"
          f" static INT8 {targets['int8_vs_fp32_mean']:.2f}x fp32; dynamic INT8 "
          f"{targets['int8_dynamic_vs_fp32_mean']:.2f}x fp32 (below 1: slower)")

    label = "" if splits.dataset.real else " (stand-in data)"
    metrics = dict(data=splits.dataset.provenance() | {"parity_images": len(x), "accuracy_images": len(x_scored)},
                   checkpoint=str(checkpoint), manifest=manifest, parity_max_abs_diff=result["max_abs_diff"],
                   parity_same_class=result["same_class"], parity_images=len(x), parity_tolerance=PARITY_TOLERANCE,
                   test_accuracy=accuracy, model_bytes=sizes,
                   quantization={"static": static_info, "dynamic": dynamic_info,
                                 "int8_accuracy_loss_points": int8_loss_points,
                                 "int8_size_ratio": targets["int8_size_ratio"]},
                   benchmark={"rows": rows, "targets_batch1_one_thread": targets, "rounds": rounds,
                              "ort_spinning": args.ort_spinning},
                   model_card={"file": "MODEL_CARD.md", "accuracy": card["accuracy"],
                               "ece": card["calibration"]["ece"], "under_shift": card["under_shift"],
                               "confused_pairs": card["confused_pairs"][:3]})
    # The committed benchmark comes from the default run of p2-cnn's model only; a named run is an experiment.
    canonical = not (args.run_name or args.checkpoint or args.ort_spinning or args.accuracy_images)
    if not args.quick and splits.dataset.real and canonical:
        save_result("p3_onnx", {"command": "make p3-onnx", **benchmark, "test_accuracy": accuracy,
                                "model_bytes": sizes, "parity_max_abs_diff": result["max_abs_diff"]})
    print(f"\nResult: parity {result['max_abs_diff']:.1e}; ONNX Runtime {targets['ort_fp32_vs_eager_mean']:.2f}x "
          f"eager, INT8 {targets['int8_vs_fp32_mean']:.2f}x fp32 at batch 1, one thread; "
          f"INT8 accuracy {100 * accuracy['ort_int8']:.2f}% vs {100 * accuracy['ort_fp32']:.2f}%{label}.")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "ort_fp32_vs_eager_mean", "value": targets["ort_fp32_vs_eager_mean"],
                                  "display": f"parity {result['max_abs_diff']:.0e}; ORT "
                                             f"{targets['ort_fp32_vs_eager_mean']:.1f}x eager, INT8 "
                                             f"{targets['int8_vs_fp32_mean']:.1f}x ORT{label}"},
                      **metrics)


def write_drift_reference(run_dir: Path, splits, blob: dict, *, quick: bool, seed: int) -> dict:
    """Reference statistics for p3-monitor's drift checks: input features of training images, and the
    model's confidences and predicted classes on the validation split. Listed in the manifest with a sha256."""
    from phase3_production.serving.drift import REFERENCE_NAME, batch_features, write_reference
    from phase3_production.serving.model import ServedModel

    train = splits.train.subset(300 if quick else 2000, seed=seed)
    val = splits.val.subset(500 if quick else len(splits.val.labels), seed=seed)
    model = ServedModel.load(run_dir, intra_op_threads=usable_cores())   # the outputs the service will compare
    x = normalize(val.images, blob["mean"], blob["std"]).numpy()
    probabilities = np.concatenate([model.predict_probabilities(x[i:i + 500]) for i in range(0, len(x), 500)])
    write_reference(run_dir / REFERENCE_NAME, batch_features(train.images.numpy()), probabilities.max(1),
                    probabilities.argmax(1), list(splits.classes))
    print(f"  drift reference: features of {len(train.labels)} training images, outputs on "
          f"{len(val.labels)} validation images -> {REFERENCE_NAME}")
    return add_reference(run_dir / "manifest.json", run_dir / REFERENCE_NAME)


def write_model_card(run_dir: Path, checkpoint: Path, model, splits, scored, blob: dict, accuracy: dict,
                     targets: dict, environment: dict, *, seed: int) -> dict:
    """``model_card.json`` and ``MODEL_CARD.md`` from figures measured here on the exported file
    (``model_card.py``); both listed in the manifest with their sha256. Returns (the manifest, the card)."""
    import torch

    from phase3_production import model_card
    from phase3_production.serving.model import ServedModel

    served = ServedModel.load(run_dir, intra_op_threads=usable_cores())   # the file the service will serve

    def probabilities(images_uint8: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(images_uint8), blob["mean"], blob["std"]).numpy()
        return np.concatenate([served.predict_probabilities(x[i:i + 500]) for i in range(0, len(x), 500)])

    images, labels, classes = scored.images.numpy(), scored.labels.numpy(), list(splits.classes)
    p = probabilities(images)
    predicted = p.argmax(1)
    upstream = checkpoint.parent / "metrics.json"
    trained = json.loads(upstream.read_text()) if upstream.is_file() else {}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    card = model_card.build_card(
        model={"name": f"ML60 CIFAR-10 CNN, widths {'-'.join(map(str, blob['arch']['widths']))}",
               "file": served.path.name, "version": served.version, "sha256": served.sha256,
               "parameters": sum(t.numel() for t in model.state_dict().values() if t.is_floating_point()),
               "exported_utc": manifest.get("created_utc"), "checkpoint": str(checkpoint)},
        data={**splits.dataset.provenance(), "split": training_split(trained, splits, seed)},
        training=training_facts(trained),
        evaluation={"images": len(labels), "accuracy": float((predicted == labels).mean()),
                    "int8_accuracy": accuracy.get("ort_int8"),
                    "per_class": model_card.per_class(predicted, labels, classes),
                    "confused_pairs": model_card.confused_pairs(predicted, labels, classes),
                    "calibration": model_card.expected_calibration_error(p, labels),
                    "under_shift": model_card.shifted_accuracy(lambda x: probabilities(x).argmax(1), images,
                                                               labels, seed=seed)},
        latency={"summary": f"ONNX Runtime fp32 {targets['ort_fp32_vs_eager_mean']:.2f}x PyTorch eager, static "
                            f"INT8 {targets['int8_vs_fp32_mean']:.2f}x fp32 (medians of interleaved rounds)",
                 "machine": f"{environment['cpu']}, {environment['usable_cores']} cores"})
    json_path, markdown_path = model_card.write_card(run_dir, card)
    e = card["evaluation"]
    worst = min(e["per_class"], key=lambda name: e["per_class"][name]["recall"] or 0)
    print(f"  model card: accuracy {100 * e['accuracy']:.2f}% on {e['images']:,} test images; lowest recall "
          f"{worst} {100 * (e['per_class'][worst]['recall'] or 0):.1f}%; ECE {e['calibration']['ece']:.3f}; "
          f"under shift " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in e["under_shift"].items())
          + f" -> {markdown_path.name}, {json_path.name}")
    add_side_file(run_dir / "manifest.json", "model_card", json_path)
    return add_side_file(run_dir / "manifest.json", "model_card_markdown", markdown_path), card


def training_split(trained: dict, splits, seed: int) -> str:
    """The images the model learned from, as its own p2-cnn run recorded them (else the split loaded here)."""
    used = trained.get("data", {})
    if "train_used" in used:
        return (f"{used['train_used']:,} training / {used['val_used']:,} validation (model selection only) / "
                f"{used.get('test_used', len(splits.test.labels)):,} test images, seed {trained.get('seed', seed)}")
    return (f"{len(splits.train.labels):,} training / {len(splits.val.labels):,} validation / "
            f"{len(splits.test.labels):,} test images, seed {seed} (the split loaded here; the training run "
            "recorded none)")


def training_facts(trained: dict) -> dict:
    """The training run's recipe and figures, from its metrics.json, written for a person."""
    facts = {}
    if "recipe_name" in trained:
        facts["recipe"] = trained["recipe_name"]
    if "recipe" in trained:
        facts["epochs"] = trained["recipe"].get("epochs")
    if "training_minutes" in trained:
        facts["training time"] = f"{trained['training_minutes']:.1f} minutes on {trained.get('device', '?')}"
    for key in ("val_accuracy", "test_accuracy"):
        if isinstance(trained.get(key), (int, float)):
            facts[key.replace("_", " ")] = f"{100 * trained[key]:.2f}%"
    return facts or {"recorded": "no metrics.json beside the checkpoint"}


def write_demo_samples(run_dir: Path, splits) -> dict:
    """One test image per class for the demo page (``serving/samples.py``), listed in the manifest with a sha256."""
    from phase3_production.serving.samples import SAMPLES_NAME, write_samples

    chosen = write_samples(run_dir / SAMPLES_NAME, splits.test.images.numpy(), splits.test.labels.numpy(),
                           list(splits.classes))
    print(f"  demo samples: {len(chosen)} test images, one per class -> {SAMPLES_NAME}")
    return add_side_file(run_dir / "manifest.json", "samples", run_dir / SAMPLES_NAME)


def check(metrics: dict) -> list[str]:
    problems = []
    if not metrics.get("parity_max_abs_diff", 1.0) <= PARITY_TOLERANCE:
        problems.append(f"parity {metrics.get('parity_max_abs_diff')} above {PARITY_TOLERANCE}")
    if metrics.get("parity_same_class") != metrics.get("parity_images") or not metrics.get("parity_images"):
        problems.append("PyTorch and ONNX Runtime disagree on some classes")
    if len(metrics.get("manifest", {}).get("sha256", "")) != 64:
        problems.append("no sha256 in the manifest")
    if "model_card" not in metrics:
        problems.append("no model card in this run (exports since the model card was added write one: "
                        "rerun make p3-onnx)")
    if "quantization" not in metrics or "benchmark" not in metrics:
        return problems + ["no INT8 quantization or benchmark in this run"]
    full = is_full_real_run(metrics)
    loss = metrics["quantization"]["int8_accuracy_loss_points"]
    limit = TARGETS["int8_accuracy_loss_points"] if full else QUICK_INT8_ACCURACY_LOSS_POINTS
    if not loss <= limit:
        problems.append(f"static INT8 loses {loss:.2f} accuracy points (limit {limit})")
    if not metrics["quantization"]["int8_size_ratio"] >= TARGETS["int8_size_ratio"]:
        problems.append(f"INT8 file only {metrics['quantization']['int8_size_ratio']:.2f}x smaller "
                        f"(target {TARGETS['int8_size_ratio']}x)")
    return problems


def speed(metrics: dict) -> list[dict]:
    """The latency ratios at batch 1, one thread, beside the reference machine's: information, not a failure.

    They depend on the CPU (its vector units, its caches, who else runs on
    it) as much as on the code: four full runs on the reference machine gave
    ORT over eager 2.33x to 2.84x.  Full runs only: a quick run times a handful of calls.
    """
    if not is_full_real_run(metrics) or "benchmark" not in metrics:
        return []
    t = metrics["benchmark"]["targets_batch1_one_thread"]
    return [speed_figure(f"{key} (batch 1, one thread)", t[key], REFERENCE_MACHINE[key], target)
            for key, target in (("ort_fp32_vs_eager_mean", TARGETS["ort_fp32_vs_eager"]),
                                ("ort_fp32_vs_eager_p95", TARGETS["ort_fp32_vs_eager"]),
                                ("int8_vs_fp32_mean", TARGETS["int8_vs_fp32"]))]


if __name__ == "__main__":
    main()
