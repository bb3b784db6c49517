"""p3-onnx (days 41-45): export the phase 2 CNN to ONNX and prove it computes the same thing.

What to take from it:

1. **Export** with ``torch.onnx.export``: opset 18, a dynamic batch axis (one
   file serves batch 1 and batch 64), checked by ``onnx.checker``.
2. **The file describes itself**: class names, input shape, normalisation
   and the source checkpoint's sha256 live in the model's metadata, and
   ``manifest.json`` beside it records the ONNX file's own sha256, which the
   service (p3-serve) verifies before it loads anything.
3. **Parity, or it did not happen**: on 1,000 real test images the PyTorch
   and ONNX Runtime logits must agree to 1e-4 and every predicted class must
   match.  A failed parity check fails the milestone.

Still to come in this milestone (not in this file yet): static INT8
quantization and the PyTorch vs ONNX Runtime latency benchmark.

Run: ``make p3-onnx`` (after ``make p2-cnn``).  Writes ``runs/p3-onnx/``:
``model.onnx``, ``manifest.json``, ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path


from common.augment import normalize
from common.runs import runs_root
from common.script import finish_run, milestone_parser, start_run
from phase2_depth.data import add_dataset_argument, cifar_splits
from phase2_depth.p2_cnn import load_model, require_same_classes
from phase3_production.onnx_export import export_onnx, onnx_session, parity, verify_onnx

MILESTONE = "p3-onnx"
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 1000


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--checkpoint", default=None, help="p2-cnn model file (default: runs/p2-cnn/model.pt)")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])

    checkpoint = Path(args.checkpoint) if args.checkpoint else runs_root() / "p2-cnn" / "model.pt"
    model, blob = load_model(checkpoint)
    print(f"\n-- 1. Export {checkpoint} (widths {blob['arch']['widths']}) to ONNX, opset 18, dynamic batch --")
    manifest = export_onnx(model, blob, checkpoint, run_dir)
    verify_onnx(run_dir / "model.onnx")
    print(f"  {manifest['onnx_file']}: {manifest['bytes'] / 1e6:.2f} MB, sha256 {manifest['sha256'][:16]}..., "
          "checked by onnx.checker and against manifest.json")

    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=(1000, 500, PARITY_IMAGES) if args.quick else None)
    require_same_classes(checkpoint, blob, splits.classes)
    test = splits.test.subset(PARITY_IMAGES, seed=args.seed)
    x = normalize(test.images, blob["mean"], blob["std"]).numpy()  # the training normalisation
    print(f"\n-- 2. Parity on {len(x):,} test images: PyTorch eager vs ONNX Runtime (CPU, all optimisations) --")
    result = parity(model, onnx_session(run_dir / "model.onnx"), x)
    labels = test.labels.numpy()
    accuracy = {"pytorch": float((result["torch_logits"].argmax(1) == labels).mean()),
                "onnx_fp32": float((result["onnx_logits"].argmax(1) == labels).mean())}
    passed = result["max_abs_diff"] <= PARITY_TOLERANCE and result["same_class"] == len(x)
    print(f"  max |logit difference| {result['max_abs_diff']:.2e} (tolerance {PARITY_TOLERANCE:g}); "
          f"same class for {result['same_class']:,}/{len(x):,} images; accuracy on them "
          f"{100 * accuracy['pytorch']:.2f}% / {100 * accuracy['onnx_fp32']:.2f}%")
    if not passed:
        raise SystemExit(f"PARITY FAILED: max |diff| {result['max_abs_diff']:.2e}, "
                         f"{len(x) - result['same_class']} images classified differently")

    label = "" if splits.dataset.real else " (stand-in data)"
    print(f"\nResult: parity holds ({result['max_abs_diff']:.1e}). Wrote {run_dir}/model.onnx and manifest.json")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "parity_max_abs_diff", "value": result["max_abs_diff"],
                                  "display": f"ONNX parity {result['max_abs_diff']:.1e} on {len(x):,} images{label}"},
                      data=splits.dataset.provenance() | {"parity_images": len(x)},
                      checkpoint=str(checkpoint), manifest=manifest, parity_max_abs_diff=result["max_abs_diff"],
                      parity_same_class=result["same_class"], parity_images=len(x),
                      parity_tolerance=PARITY_TOLERANCE, test_accuracy=accuracy)


def check(metrics: dict) -> list[str]:
    problems = []
    if not metrics.get("parity_max_abs_diff", 1.0) <= PARITY_TOLERANCE:
        problems.append(f"parity {metrics.get('parity_max_abs_diff')} above {PARITY_TOLERANCE}")
    if metrics.get("parity_same_class") != metrics.get("parity_images") or not metrics.get("parity_images"):
        problems.append("PyTorch and ONNX Runtime disagree on some classes")
    if len(metrics.get("manifest", {}).get("sha256", "")) != 64:
        problems.append("no sha256 in the manifest")
    if "quantization" not in metrics or "benchmark" not in metrics:
        problems.append("INT8 quantization and the latency benchmark are not built yet")
    return problems


if __name__ == "__main__":
    main()
