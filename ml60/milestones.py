"""The curriculum index: thirteen milestones, one id each.

One id names everything that belongs to a milestone:

* the make target          ``make p1-numpy``
* the module               ``python -m phase1_foundation.p1_numpy``
* the run folder           ``runs/p1-numpy/`` (``metrics.json`` + pictures)
* the pytest marker        ``pytest -m p1-numpy``

This file is plain data and imports only the standard library, so that
``make help`` works before anything is installed.  A milestone whose module
does not exist yet is listed as "not built yet" rather than hidden.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Milestone:
    id: str
    days: str
    phase: int
    module: str
    summary: str
    # Arguments added when a whole phase runs: a service checks itself and stops instead of serving forever.
    phase_args: tuple[str, ...] = ()

    @property
    def built(self) -> bool:
        """True once the milestone's module exists in this checkout."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False


MILESTONES: tuple[Milestone, ...] = (
    Milestone("p1-numpy", "1-3", 1, "phase1_foundation.p1_numpy",
              "broadcasting, matmul by hand, a NumPy 2-layer net with a gradient check"),
    Milestone("p1-autograd", "4-7", 1, "phase1_foundation.p1_autograd",
              "tensors, autograd, the graph, .data vs .detach(), why zero_grad"),
    Milestone("p1-manual", "8-12", 1, "phase1_foundation.p1_manual",
              "the 2-layer net without nn.Sequential, and again from raw tensors"),
    Milestone("p1-train", "13-17", 1, "phase1_foundation.p1_train",
              "train on MNIST to 97%+, and why not 99%"),
    Milestone("p1-refactor", "18-20", 1, "phase1_foundation.p1_refactor",
              "Dataset, DataLoader, Model, Trainer classes"),
    Milestone("p2-data", "21-25", 2, "phase2_depth.p2_data",
              "normalisation, augmentation, train/val/test split"),
    Milestone("p2-cnn", "26-30", 2, "phase2_depth.p2_cnn",
              "5-layer CNN: Conv2d, BatchNorm2d, Dropout, MaxPool2d"),
    Milestone("p2-eval", "31-35", 2, "phase2_depth.p2_eval",
              "confusion matrix, precision/recall/F1, per-class accuracy"),
    Milestone("p2-search", "36-40", 2, "phase2_depth.p2_search",
              "schedules, batch sizes, regularisation, chosen on validation"),
    Milestone("p3-onnx", "41-45", 3, "phase3_production.p3_onnx",
              "export, parity check, PyTorch vs ONNX Runtime benchmark, INT8"),
    Milestone("p3-serve", "46-50", 3, "phase3_production.p3_serve",
              "FastAPI service: verified model, hostile-input handling, micro-batching, Dockerfile",
              phase_args=("--self-test",)),
    Milestone("p3-deploy", "51-55", 3, "phase3_production.p3_deploy",
              "Kubernetes manifests validated offline, cross-checked with the image and the app"),
    Milestone("p3-monitor", "56-60", 3, "phase3_production.p3_monitor",
              "latency, throughput, drift detection"),
)

PHASE_TITLES = {
    1: "Phase 1, days 1-20: foundation (MNIST)",
    2: "Phase 2, days 21-40: depth (CIFAR-10)",
    3: "Phase 3, days 41-60: production (ONNX, service, deploy, monitor)",
}


def by_id(milestone_id: str) -> Milestone:
    for milestone in MILESTONES:
        if milestone.id == milestone_id:
            return milestone
    known = ", ".join(m.id for m in MILESTONES)
    raise KeyError(f"unknown milestone {milestone_id!r}; the milestones are: {known}")


def in_phase(phase: int) -> list[Milestone]:
    return [m for m in MILESTONES if m.phase == phase]
