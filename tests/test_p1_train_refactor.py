"""p1-train and p1-refactor: the seed recipe's code path, the refactor, and the fast path on real MNIST."""

from __future__ import annotations

import pytest
import torch

from phase1_foundation import p1_refactor, p1_train
from phase1_foundation.models import SimpleNet, SmallCNN, WideMLP

train_mark = getattr(pytest.mark, "p1-train")
refactor_mark = getattr(pytest.mark, "p1-refactor")


@pytest.mark.parametrize("make", [SimpleNet, WideMLP, SmallCNN])
def test_models_map_mnist_batches_to_ten_logits(make):
    assert make()(torch.randn(5, 1, 28, 28)).shape == (5, 10)


@train_mark
@refactor_mark
@pytest.mark.slow
def test_quick_chain_train_then_refactor(tmp_path, monkeypatch):
    """p1-train writes its run; p1-refactor finds it and compares (what `make phase1 QUICK=1` does)."""
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    train = p1_train.main(["--quick", "--device", "cpu", "--budget", "1"])
    assert p1_train.check(train) == []
    for name in ("metrics.json", "curves.png", "misclassified.png", "why_not_99.png", "baselines.png", "model.pt"):
        assert (tmp_path / "p1-train" / "quick" / name).is_file(), name
    assert set(train["comparison"]) == {"SimpleNet 784-128-10", "wide MLP 784-1024-1024-10",
                                        "small CNN (2 conv + pool)"}
    assert train["train_accuracy"] > 0 and train["misclassified"] > 0
    assert_baselines_recorded(train)

    refactor = p1_refactor.main(["--quick", "--device", "cpu"])
    assert p1_refactor.check(refactor) == []
    assert refactor["reproduce"]["p1_train_test_accuracy"] == train["test_accuracy"]
    assert (tmp_path / "p1-refactor" / "quick" / "fast-seed0" / "last.pt").is_file()


def assert_baselines_recorded(metrics: dict) -> None:
    """Section 4: five models measured alike, the two networks' figures reused from section 3, requirements answered."""
    section = metrics["baselines"]
    models = section["models"]
    assert set(models) == {"logistic regression", "3-nearest neighbours", "random forest", "SimpleNet 784-128-10",
                           "small CNN (2 conv + pool)"}
    for name, row in models.items():
        assert 0 <= row["test_accuracy"] <= 1 and row["fit_seconds"] >= 0, (name, row)
        assert row["ms_per_image_min"] <= row["ms_per_image"] <= row["ms_per_image_max"], (name, row)
        assert row["size_bytes"] > 0, (name, row)
    for name in ("SimpleNet 784-128-10", "small CNN (2 conv + pool)"):
        assert models[name]["test_accuracy"] == metrics["comparison"][name]["test_accuracy"]
        assert models[name]["size_bytes"] == 4 * metrics["comparison"][name]["parameters"]   # float32 parameters
    assert models["logistic regression"]["size_bytes"] > 4 * 7850   # 784 x 10 weights and 10 biases, pickled
    assert [a["requirement"] for a in section["requirements"]] == [">= 92% at <= 0.05 ms/image", ">= 97%", ">= 99%"]
    assert all(a["answer"] in (*models, None) for a in section["requirements"])


@train_mark
def test_pickle_bytes_counts_what_pickle_writes():
    import pickle

    import numpy as np

    from phase1_foundation import baselines

    for value in ({"w": np.ones((300, 7), np.float32)}, list(range(1000)), "text"):
        assert baselines.pickle_bytes(value) == len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    assert baselines.parameter_bytes(SimpleNet()) == 4 * (784 * 128 + 128 + 128 * 10 + 10)


@refactor_mark
def test_refactor_without_p1_train_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    metrics = p1_refactor.main(["--quick", "--device", "cpu", "--epochs", "1"])
    assert metrics["reproduce"]["difference"] is None
    assert any("make p1-train" in p for p in p1_refactor.check(metrics))


@refactor_mark
def test_dataset_class_matches_torchvision_semantics():
    from torchvision import transforms

    from common.data import Split

    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    ds = p1_refactor.MNISTDataset(Split(images, torch.tensor([4, 5, 6])), transforms.ToTensor())
    x, y = ds[1]
    assert len(ds) == 3 and y == 5 and x.shape == (1, 28, 28)
    assert torch.allclose(x, images[1].float() / 255)


@refactor_mark
@pytest.mark.real_data
@pytest.mark.slow
def test_fast_path_reaches_98_percent_on_real_mnist(real_data_dir, tmp_path):
    """The fast path's target, measured in CI: median of 3 seeds >= 98.0% within 10 epochs."""
    from common.data import load_dataset

    data = load_dataset("mnist", data_dir=real_data_dir, download=False)
    args = type("Args", (), {"quick": False, "epochs": None})()
    runs = [p1_refactor.fast(data, args, torch.device("cpu"), tmp_path, seed) for seed in range(3)]
    accuracies = sorted(r["test_accuracy"] for r in runs)
    assert all(r["epochs"] <= 10 for r in runs)
    assert accuracies[1] >= p1_refactor.FAST_TARGET_ACCURACY, accuracies


@train_mark
@refactor_mark
@pytest.mark.real_data
@pytest.mark.slow
def test_refactor_reproduces_the_seed_recipe_on_real_mnist(real_data_dir, tmp_path):
    """The seed recipe, as a plain loop and through the classes: within 0.3 points.

    Two of the recipe's ten epochs keep CI under its time budget (~55 s for both loops on 2 cores,
    instead of ~5 min): 97.1% and 97.06% after two (seed 0), a 0.06-point gap. The 10-epoch target
    (97.5%) is what `make p1-train` measures and `make progress` checks.
    """
    from common.data import load_dataset

    epochs = 2
    data = load_dataset("mnist", data_dir=real_data_dir, download=False)
    train_ds, test_ds = p1_train.seed_datasets(data, real_data_dir, quick=False, seed=0)
    _, history, _ = p1_train.train_seed_recipe(train_ds, test_ds, epochs=epochs, device=torch.device("cpu"),
                                               seed=0)
    assert history[-1]["val_accuracy"] >= 0.96   # already past 96% after 2 epochs; chance is 10%
    args = type("Args", (), {"quick": False, "epochs": epochs, "seed": 0})()
    refactored = p1_refactor.classic(data, args, torch.device("cpu"), tmp_path)
    difference = refactored["test_accuracy"] - history[-1]["val_accuracy"]
    assert abs(difference) <= p1_refactor.REPRODUCE_TOLERANCE, difference


@train_mark
@pytest.mark.real_data
@pytest.mark.slow
def test_small_cnn_passes_99_percent_on_real_mnist(real_data_dir):
    """What answers 'why not 99%': the small CNN gets there (5 epochs, ~45 s on 2 cores)."""
    from common.data import load_dataset
    from common.loaders import TensorLoader
    from common.trainer import TrainConfig, Trainer

    data = load_dataset("mnist", data_dir=real_data_dir, download=False)
    mean, std = p1_train.MNIST_MEAN, p1_train.MNIST_STD
    torch.manual_seed(0)
    trainer = Trainer(SmallCNN(), TrainConfig(epochs=5, lr=2e-3, schedule="onecycle"), device="cpu",
                      progress=False)
    trainer.fit(TensorLoader(data.train, 128, mean=mean, std=std, seed=0))
    result = trainer.evaluate(TensorLoader(data.test, 2000, mean=mean, std=std, shuffle=False))
    assert result["accuracy"] >= p1_train.CNN_TARGET_ACCURACY, result
