"""Shared fixtures: generated datasets in the real file formats, and the real-data switch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common import formats


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No downloads in unit tests, and a cache folder of the test session's own."""
    monkeypatch.setenv("ML60_OFFLINE", "1")
    monkeypatch.setenv("ML60_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ml60-cache"))
    monkeypatch.delenv("DATA_DIR", raising=False)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-thread")
def torch_threads(request):
    """Run a test once per torch thread count.

    A multi-threaded kernel splits its sums across threads, and float
    addition is not associative, so a figure built from reductions can move
    with the thread count.  Tests whose verdict must not depend on the
    machine take this fixture and are run at one thread and at two.
    """
    from common.benchmark import torch_threads as threads

    with threads(request.param):
        yield request.param


def pytest_configure(config):
    """Threads per test process: an explicit ``OMP_NUM_THREADS``, else the cores shared among the workers.

    ``OMP_NUM_THREADS=4 make test`` means four torch threads, even on two
    cores: OpenMP caps its default at the core count, so the variable alone
    would leave torch at two, and auditing tolerances at four threads needs
    four.  Unset, and with ``pytest -n 2`` (what ``make test`` runs), each
    worker, and every process it starts, gets its share of the cores: two
    workers each running two-thread kernels on two cores would spend their
    time waiting for each other.
    """
    from common.benchmark import usable_cores

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "OMP_NUM_THREADS" not in os.environ and workers > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, usable_cores() // workers))
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0:
        import torch

        torch.set_num_threads(int(wanted))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder ``ML60_DATA_DIR`` points at (``make test DATA_DIR=...``, and CI).

    Unset: real-data tests are skipped (a laptop without the data).  Set: they
    run, and fail if the data is not there. Never a silent pass.
    """
    value = os.environ.get("ML60_DATA_DIR")
    if not value:
        pytest.skip("real-data test: run `make test DATA_DIR=<folder with the datasets>` to enable")
    return Path(value)


def make_mnist_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train, dtype=np.uint8) % 10,
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test, dtype=np.uint8) % 10)


def write_mnist_folder(root: Path, *, gz: bool = True, arrays=None) -> Path:
    """Write the four MNIST IDX files into ``root/MNIST/raw`` (gzipped or plain)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    tx, ty, vx, vy = arrays or make_mnist_arrays()
    suffix = ".gz" if gz else ""
    for stem, array in (("train-images-idx3-ubyte", tx), ("train-labels-idx1-ubyte", ty),
                        ("t10k-images-idx3-ubyte", vx), ("t10k-labels-idx1-ubyte", vy)):
        formats.write_idx(raw / f"{stem}{suffix}", array)
    return raw


@pytest.fixture
def mnist_folder(tmp_path) -> Path:
    write_mnist_folder(tmp_path)
    return tmp_path


# The longest files, longest first, from `make test`'s --durations (2-core CPU): the stub proof's three
# stretches (290 s in all), the phase-1 training tests (200 s), p2-cnn's (100 s), then about 50 s each.
LONGEST_FILES = tuple(f"tests/{name}.py" for name in (
    "test_exercise_stubs_phase2", "test_p1_train_refactor", "test_exercise_stubs_phase3", "test_exercise_stubs",
    "test_p2_cnn", "test_start_here", "test_p2_eval_search", "test_bench_p2",
    "test_p2_data", "test_distill", "test_p3_load"))


TRAINED_MODEL_FIXTURES = {"quick_p2_cnn_run", "quick_p3_onnx_export", "with_quick_p2_cnn"}


def pytest_collection_modifyitems(items):
    """Marker spellings, ``slow`` for every test that needs a trained model, and the longest files first.

    ``-m p1_numpy`` selects what ``-m p1-numpy`` selects (both spellings are
    registered).  ``make test`` spreads whole files over two workers in the
    order they are collected; a long file picked up last would leave one
    worker idle while the other finishes it, so the longest go first (each
    file keeps its own order).
    """
    for item in items:
        for mark in list(item.iter_markers()):
            if mark.name.startswith(("p1-", "p2-", "p3-")):
                item.add_marker(mark.name.replace("-", "_"))
        if TRAINED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)      # the first such test trains the model (about a minute)
    rank = {name: position for position, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def quick_p2_cnn_run(tmp_path_factory) -> Path:
    """One quick p2-cnn run for the session (``<runs>/p2-cnn/quick/``): the later milestones' tests copy it."""
    from phase2_depth import p2_cnn

    runs = tmp_path_factory.mktemp("quick-p2-cnn")
    mp = pytest.MonkeyPatch()
    mp.setenv("ML60_RUNS_DIR", str(runs))
    mp.setenv("ML60_OFFLINE", "1")
    mp.setenv("ML60_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ml60-cache"))
    mp.delenv("DATA_DIR", raising=False)
    try:
        p2_cnn.main(["--quick", "--device", "cpu"])
    finally:
        mp.undo()
    return runs / "p2-cnn" / "quick"


@pytest.fixture(scope="session")
def quick_p3_onnx_export(tmp_path_factory, quick_p2_cnn_run):
    """One quick p3-onnx run for the session on a copy of the quick p2-cnn run: ``(runs folder, metrics)``.

    p3-onnx's tests and the model card's read it; a test that changes a file copies the export first.
    """
    import shutil

    from phase3_production import p3_onnx

    runs = tmp_path_factory.mktemp("quick-p3-onnx")
    shutil.copytree(quick_p2_cnn_run, runs / "p2-cnn" / "quick")
    mp = pytest.MonkeyPatch()
    mp.setenv("ML60_RUNS_DIR", str(runs))
    mp.setenv("ML60_OFFLINE", "1")
    mp.setenv("ML60_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ml60-cache"))   # the session's, as above
    mp.delenv("DATA_DIR", raising=False)
    try:
        metrics = p3_onnx.main(["--quick"])
    finally:
        mp.undo()
    return runs, metrics


@pytest.fixture
def with_quick_p2_cnn(quick_p2_cnn_run, tmp_path, monkeypatch) -> Path:
    """A runs folder of this test's own holding a copy of the session's quick p2-cnn run."""
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(quick_p2_cnn_run, runs / "p2-cnn" / "quick")
    monkeypatch.setenv("ML60_RUNS_DIR", str(runs))
    return runs


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """An untrained but real exported CNN (fp32 + static INT8) with its manifest: seconds, no dataset."""
    import torch

    from common.data import CIFAR10_CLASSES
    from phase2_depth.p2_cnn import RECIPES, build_model
    from phase3_production.onnx_export import add_variant, export_onnx
    from phase3_production.quantize import quantize_static_int8

    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = build_model(RECIPES["quick"], num_classes=10).eval()
    checkpoint = out / "source.pt"
    torch.save({"weights": model.state_dict()}, checkpoint)
    blob = {"input_shape": [3, 32, 32], "classes": CIFAR10_CLASSES, "mean": [0.49, 0.48, 0.45],
            "std": [0.25, 0.24, 0.26], "test_accuracy": None, "val_accuracy": None}
    export_onnx(model, blob, checkpoint, out)
    calibration = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
    info = quantize_static_int8(out / "model.onnx", out / "model.int8.onnx", calibration)
    add_variant(out / "manifest.json", "int8", out / "model.int8.onnx", quantization=info)
    # Drift reference: features of random "training" images, outputs of the model on other random images.
    from phase3_production.onnx_export import add_reference
    from phase3_production.serving.drift import REFERENCE_NAME, batch_features, write_reference

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (400, 3, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        probs = torch.softmax(model((torch.from_numpy(train).float() / 255 - 0.5) / 0.25), 1).numpy()
    write_reference(out / REFERENCE_NAME, batch_features(train), probs.max(1), probs.argmax(1), CIFAR10_CLASSES)
    add_reference(out / "manifest.json", out / REFERENCE_NAME)
    # Demo samples: one noise image per class, as p3-onnx writes one test image per class.
    from phase3_production.onnx_export import add_side_file
    from phase3_production.serving.samples import SAMPLES_NAME, write_samples

    write_samples(out / SAMPLES_NAME, train[:40], np.arange(40) % 10, CIFAR10_CLASSES)
    add_side_file(out / "manifest.json", "samples", out / SAMPLES_NAME)
    return out
