"""Knowledge distillation: a narrow CNN taught by the wide one, beside INT8 (p3-onnx's compression lesson).

INT8 makes the same network cheaper to run; distillation trains a smaller
network to do the same job.  The student learns from the teacher's *soft
targets*: its whole probability distribution over the classes, softened by a
temperature T, which says far more than the label does ("this cat looks a
little like a dog, not at all like a truck").  Hinton, Vinyals and Dean,
"Distilling the Knowledge in a Neural Network" (2015),
https://arxiv.org/abs/1503.02531.

The experiment, on real CIFAR-10, everything else held equal:

1. **the teacher**: p2-cnn's model (widths 32-64-128-256-256), as trained;
2. **the student**: the narrow CNN (widths 16-32-64-128-128, about a quarter
   of the multiply-adds), trained on the labels alone;
3. **the student distilled**: the same network, the same initial weights,
   the same data order and schedule, trained on
   :func:`distillation_loss` (the teacher's soft targets and the labels);
4. each of the three exported to ONNX and quantised to static INT8, then
   scored on the test set and timed at batch 1, one thread, in interleaved
   rounds: a table of accuracy kept against latency gained.

Run: ``make distill`` (after ``make p2-cnn``; about 25 minutes on 2 cores),
``make distill QUICK=1`` (a minute on a subset).  Writes
``runs/distill/``: ``distill.md`` (the table), ``distill.png`` (accuracy
against latency), ``metrics.json``; a full run on real data also
``benchmarks/results/distill.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.augment import normalize
from common.benchmark import environment_stamp, save_result, usable_cores
from common.runs import describe_run, upstream_run, write_json
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from common.trainer import TrainConfig
from phase2_depth.data import AUGMENT, add_dataset_argument, cifar_splits
from phase2_depth.models import multiply_adds, parameter_count
from phase2_depth.p2_cnn import RECIPES, CnnTrainer, build_model, load_model, require_same_classes, save_model

NAME = "distill"
STUDENT = dict(RECIPES["cpu"], widths="narrow", dropout=0.1)   # the cpu recipe, narrow widths
STUDENT_EPOCHS = 10
TEMPERATURE = 4.0
ALPHA = 0.9                 # the weight of the soft targets; 1 - ALPHA on the labels
QUICK_SUBSET = (3000, 500, 1000)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's distillation loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    1. **Soften both**: divide each model's logits by the temperature ``T``
       before the softmax; ``T > 1`` flattens the distributions, so the
       teacher's small probabilities (the "dark knowledge": which wrong
       classes look alike) become visible.
    2. **Match them**: the KL divergence from the teacher's softened
       distribution ``p`` to the student's ``q``, ``sum p * (log p - log q)``,
       averaged over the batch (``F.kl_div`` takes the student's *log*
       probabilities and the teacher's probabilities, ``reduction="batchmean"``).
    3. **Scale by T^2**: the gradients of the softened term shrink as
       ``1 / T^2``; multiplying by ``T^2`` keeps the two terms' balance the
       same whatever the temperature (the paper, section 2).
    4. **Mix with the labels**: ``(1 - alpha)`` of ordinary cross-entropy on
       the true labels, at temperature 1.

    The teacher's logits are targets: no gradient flows into the teacher.
    """
    # EXERCISE p3-onnx.5: the distillation loss
    # hint: q = log_softmax(student / T), p = softmax(teacher / T) (detached); F.kl_div(q, p, reduction="batchmean") * T * T
    # hint: then alpha * soft + (1 - alpha) * cross_entropy(student, labels, label_smoothing=...)
    soft_student = F.log_softmax(student_logits / temperature, dim=1)
    soft_teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(soft_student, soft_teacher, reduction="batchmean") * temperature * temperature
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * soft + (1 - alpha) * hard
    # END EXERCISE


class DistillationTrainer(CnnTrainer):
    """p2-cnn's trainer, whose loss also asks the teacher about every training batch (in eval mode, no gradient)."""

    def __init__(self, model, config: TrainConfig, *, teacher: torch.nn.Module, temperature: float, alpha: float,
                 **kwargs):
        super().__init__(model, config, **kwargs)
        self.teacher = teacher.to(self.device).eval()
        if config.channels_last:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha

    def loss(self, logits, x, y):
        with torch.no_grad():
            teacher_logits = self.teacher(x)    # the same augmented images the student sees
        return distillation_loss(logits, teacher_logits.float(), y, temperature=self.temperature, alpha=self.alpha,
                                 label_smoothing=self.config.label_smoothing)


# --------------------------------------------------------------------------- training the two students


def train_student(splits, *, teacher, epochs: int, seed: int, device, run_dir: Path, name: str) -> dict:
    """Train the narrow student from the same initial weights and data order; ``teacher=None``: labels only."""
    recipe = dict(STUDENT, epochs=epochs)
    torch.manual_seed(seed)                                   # the same initial weights for both students
    model = build_model(recipe, num_classes=len(splits.classes))
    train_loader, _, test_loader = splits.loaders(recipe["batch_size"], device=device, augment=AUGMENT, seed=seed,
                                                  channels_last=True)
    config = TrainConfig(epochs=epochs, optimizer="sgd", lr=recipe["lr"], momentum=0.9, nesterov=True,
                         weight_decay=recipe["weight_decay"], schedule="onecycle",
                         label_smoothing=recipe["label_smoothing"], channels_last=True, seed=seed)
    if teacher is None:
        trainer = CnnTrainer(model, config, device=device, progress=False)
    else:
        trainer = DistillationTrainer(model, config, teacher=teacher, temperature=TEMPERATURE, alpha=ALPHA,
                                      device=device, progress=False)
    start = time.perf_counter()
    trainer.fit(train_loader)
    minutes = (time.perf_counter() - start) / 60
    test = trainer.evaluate(test_loader)
    save_model(run_dir / f"{name}.pt", trainer.raw_model, splits, recipe, test_accuracy=test["accuracy"])
    print(f"  {name}: test {100 * test['accuracy']:.2f}% after {epochs} epochs, {minutes:.1f} min")
    return {"checkpoint": run_dir / f"{name}.pt", "minutes": minutes, "test_accuracy_pytorch": test["accuracy"]}


# --------------------------------------------------------------------------- export, INT8, score, time


def export_and_quantize(model, blob: dict, checkpoint: Path, folder: Path, calibration: np.ndarray) -> dict:
    """``folder/model.onnx`` and ``folder/model.int8.onnx`` (static, calibrated): p3-onnx's own two steps."""
    from phase3_production.onnx_export import export_onnx, verify_onnx
    from phase3_production.quantize import quantize_static_int8

    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model, blob, checkpoint, folder)
    verify_onnx(folder / "model.onnx")
    quantize_static_int8(folder / "model.onnx", folder / "model.int8.onnx", calibration)
    return {"fp32": folder / "model.onnx", "int8": folder / "model.int8.onnx"}


def session_runner(session):
    """An ONNX Runtime session as the benchmark's runner: a batch in, the logits out."""
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def time_variants(sessions: dict, example: np.ndarray, *, rounds: int, repeats: int) -> dict[str, dict]:
    """Batch-1 latency of each ONNX Runtime session, one thread, in interleaved rounds.

    Each round times every variant once (after its warm-up), so a slow
    moment of a shared machine hits all of them alike; the figure is the
    median of the per-round medians.
    """
    from phase3_production.inference_benchmark import time_engine_calls

    per_round = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            times = time_engine_calls(session_runner(session), example, warmup=20, repeats=repeats)
            per_round[key].append(1000 * float(np.median(times)))
    return {key: {"median_ms": float(np.median(ms)), "rounds_ms": [round(m, 4) for m in ms]}
            for key, ms in per_round.items()}


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "int8": "s"}
    colours = {"teacher": "#1f77b4", "student": "#ff7f0e", "student distilled": "#2ca02c"}
    for row in rows:
        ax.scatter(row["batch1_ms"], 100 * row["test_accuracy"], s=70, marker=markers[row["precision"]],
                   color=colours[row["model"]], label=f"{row['model']}, {row['precision']}")
        ax.annotate(f"{100 * row['test_accuracy']:.1f}%", (row["batch1_ms"], 100 * row["test_accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("batch-1 latency, one thread (ms, median of rounds)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy kept against latency gained: distillation beside INT8")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown(rows: list[dict]) -> str:
    lines = ["| model | precision | parameters | multiply-adds | test accuracy | batch-1 ms (1 thread) | "
             "speed vs teacher fp32 | file MB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['parameters']:,} | {r['multiply_adds'] / 1e6:.1f}M | "
                     f"{100 * r['test_accuracy']:.2f}% | {r['batch1_ms']:.3f} | {r['speedup_vs_teacher_fp32']:.2f}x | "
                     f"{r['file_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(NAME, __doc__)
    parser.add_argument("--teacher", default=None, help="p2-cnn model file (default: the full p2-cnn run's, else quick)")
    parser.add_argument("--epochs", type=int, default=None, help=f"student epochs (default {STUDENT_EPOCHS}; quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="latency rounds (default 5; quick 1)")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    run_dir = start_run(NAME, args)
    print(__doc__.split("\n\n")[0])
    device = torch.device("cpu")
    teacher_path = Path(args.teacher) if args.teacher else upstream_run("p2-cnn") / "model.pt"
    if not args.teacher:
        print(f"  the teacher: {describe_run(teacher_path.parent)}")
    teacher, blob = load_model(teacher_path)
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=QUICK_SUBSET if args.quick else None)
    require_same_classes(teacher_path, blob, splits.classes)
    epochs = args.epochs or (1 if args.quick else STUDENT_EPOCHS)
    print(f"[data] train {len(splits.train):,} / test {len(splits.test):,}; students: widths narrow, {epochs} "
          f"epochs each, T = {TEMPERATURE}, alpha = {ALPHA}")

    print("\n-- 1. The student on the labels alone, then the same student distilled from the teacher --")
    students = {"student": train_student(splits, teacher=None, epochs=epochs, seed=args.seed, device=device,
                                         run_dir=run_dir, name="student"),
                "student distilled": train_student(splits, teacher=teacher, epochs=epochs, seed=args.seed,
                                                   device=device, run_dir=run_dir, name="student_distilled")}

    print("\n-- 2. Each model exported to ONNX and to static INT8, scored on the test set, timed at batch 1 --")
    from phase3_production.inference_benchmark import accuracy as engine_accuracy
    from phase3_production.runtime import onnx_session

    calibration = normalize(splits.train.subset(min(512, len(splits.train.labels)), seed=args.seed).images,
                            blob["mean"], blob["std"]).numpy()
    x_test = normalize(splits.test.images, blob["mean"], blob["std"]).numpy()
    labels = splits.test.labels.numpy()
    models = {"teacher": (teacher, blob, teacher_path)}
    for key, result in students.items():
        model, student_blob = load_model(result["checkpoint"])
        models[key] = (model, student_blob, result["checkpoint"])
    sessions, rows = {}, []
    for key, (model, model_blob, checkpoint) in models.items():
        files = export_and_quantize(model.eval(), model_blob, checkpoint, run_dir / key.replace(" ", "_"), calibration)
        for precision, path in files.items():
            sessions[(key, precision)] = onnx_session(path, 1)
            rows.append({"model": key, "precision": precision, "file": str(path.relative_to(run_dir)),
                         "file_bytes": path.stat().st_size, "parameters": parameter_count(model),
                         "multiply_adds": multiply_adds(model),
                         "test_accuracy": engine_accuracy(session_runner(onnx_session(path, usable_cores())),
                                                          x_test, labels)})
    rounds = args.rounds or (1 if args.quick else 5)
    timed = time_variants(sessions, x_test[:1], rounds=rounds, repeats=50 if args.quick else 300)
    base = timed[("teacher", "fp32")]["median_ms"]
    for row in rows:
        t = timed[(row["model"], row["precision"])]
        row.update(batch1_ms=t["median_ms"], rounds_ms=t["rounds_ms"], speedup_vs_teacher_fp32=base / t["median_ms"])
    table = markdown(rows)
    print(table)
    environment = environment_stamp()
    (run_dir / "distill.md").write_text(f"{table}\n\nEnvironment: {environment['cpu']}, "
                                        f"{environment['usable_cores']} cores; students {epochs} epochs; "
                                        f"T = {TEMPERATURE}, alpha = {ALPHA}.\n")
    write_json(run_dir / "distill.json", {"environment": environment, "rows": rows})
    plot(rows, run_dir / "distill.png")

    accuracy = {(r["model"], r["precision"]): r["test_accuracy"] for r in rows}
    gained = accuracy[("student distilled", "fp32")] - accuracy[("student", "fp32")]
    kept = accuracy[("student distilled", "fp32")] / accuracy[("teacher", "fp32")]
    speed = base / timed[("student distilled", "fp32")]["median_ms"]
    label = "" if splits.dataset.real else " (stand-in data)"
    print(f"\nResult: the distilled student keeps {100 * kept:.1f}% of the teacher's accuracy "
          f"({100 * accuracy[('student distilled', 'fp32')]:.2f}% vs {100 * accuracy[('teacher', 'fp32')]:.2f}%), "
          f"{100 * gained:+.2f} points over the same student on labels alone, {speed:.2f}x faster at batch 1; "
          f"its INT8 {base / timed[('student distilled', 'int8')]['median_ms']:.2f}x.{label}")
    metrics = dict(data=splits.dataset.provenance() | {"train_used": len(splits.train), "test_used": len(splits.test)},
                   teacher=str(teacher_path), student_recipe=dict(STUDENT, epochs=epochs), temperature=TEMPERATURE,
                   alpha=ALPHA, rows=rows, training_minutes={k: v["minutes"] for k, v in students.items()},
                   distilled_gain_points=100 * gained, accuracy_kept=kept, distilled_speedup=speed,
                   environment=environment)
    if not args.quick and splits.dataset.real and not args.run_name:
        save_result("distill", {"command": "make distill", **metrics})
    return finish_run(run_dir, NAME, args,
                      key_figure={"name": "distilled_gain_points", "value": 100 * gained,
                                  "display": f"distilled student {100 * accuracy[('student distilled', 'fp32')]:.1f}% "
                                             f"({100 * gained:+.1f} points over labels alone), {speed:.1f}x faster "
                                             f"than the teacher{label}"},
                      **metrics)


def check(metrics: dict) -> list[str]:
    """What must hold on any machine: every variant measured, accuracies and latencies that are numbers."""
    problems = []
    rows = metrics.get("rows", [])
    expected = {(m, p) for m in ("teacher", "student", "student distilled") for p in ("fp32", "int8")}
    if {(r["model"], r["precision"]) for r in rows} != expected:
        problems.append("the table lacks a model or a precision")
    for r in rows:
        if not (0 <= r["test_accuracy"] <= 1 and r["batch1_ms"] > 0):
            problems.append(f"{r['model']} {r['precision']}: accuracy or latency is not a measurement")
    if is_full_real_run(metrics):
        int8_loss = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a in rows for b in rows
                     if a["model"] == b["model"] and a["precision"] == "fp32" and b["precision"] == "int8"]
        if any(loss > 1.0 for loss in int8_loss):
            problems.append(f"static INT8 loses more than 1 point on some model: {int8_loss}")
    return problems


if __name__ == "__main__":
    main()
