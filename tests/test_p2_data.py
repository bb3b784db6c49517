"""p2-data: the split is stratified, seeded and disjoint; both augmentation pipelines agree."""

from __future__ import annotations

import pytest
import torch

from phase2_depth import p2_data
from phase2_depth.data import channel_stats, cifar_splits, stratified_split

pytestmark = getattr(pytest.mark, "p2-data")


def test_stratified_split_is_seeded_balanced_and_disjoint():
    labels = torch.arange(1000) % 10
    train, val = stratified_split(labels, 100, seed=3)
    again, val_again = stratified_split(labels, 100, seed=3)
    other, _ = stratified_split(labels, 100, seed=4)
    assert len(val) == 100 and set(train).isdisjoint(val) and len(train) + len(val) == 1000
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert (train == again).all() and (val == val_again).all() and not (train == other).all()


def test_channel_stats_on_known_images():
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:2, 0] = 255
    mean, std = channel_stats(images)
    expected_std = torch.tensor([1.0] * 8 + [0.0] * 8).std().item()  # 8 white and 8 black values
    assert mean == pytest.approx((0.5, 0.0, 0.0)) and std[0] == pytest.approx(expected_std) and std[1] == 0


def test_both_pipelines_give_the_same_statistics():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 32, 32), generator=g, dtype=torch.uint8)
    result = p2_data.compare_pipelines(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), repeats=3, seed=0)
    assert result["max_mean_diff"] < p2_data.PIPELINE_TOLERANCE
    assert result["max_std_diff"] < p2_data.PIPELINE_TOLERANCE
    assert result["padded_share_diff"] < p2_data.PADDED_TOLERANCE
    assert 0.08 < result["fast"]["padded_share"] < 0.18  # a 4-pixel pad leaves ~13% zeros on average


@pytest.mark.slow
def test_quick_run_passes_its_check(tmp_path):
    metrics = p2_data.main(["--quick", "--run-dir", str(tmp_path)])
    assert p2_data.check(metrics) == []
    assert (tmp_path / "augmentations.png").is_file()


def test_check_catches_a_leaky_or_unbalanced_split():
    metrics = {"class_counts": {"val": [400, 600]}, "val_train_overlap_in_sample": 3,
               "pipelines": {"max_mean_diff": 0.0, "max_std_diff": 0.0, "padded_share_diff": 0.0}}
    problems = p2_data.check(metrics)
    assert any("stratified" in p for p in problems) and any("also appear" in p for p in problems)


@pytest.mark.real_data
def test_real_cifar10_split_and_statistics(real_data_dir, tmp_path, monkeypatch):
    splits = cifar_splits(data_dir=real_data_dir, announce=lambda m: None)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45_000, 5_000, 10_000)
    assert splits.dataset.real and splits.classes[0] == "airplane"
    assert splits.val.class_counts(10) == [500] * 10
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    metrics = p2_data.main(["--data-dir", str(real_data_dir)])       # the full run, where `make p2-data` writes it
    assert p2_data.check(metrics) == []
    from ml60 import cli
    from ml60.milestones import by_id

    shown = cli.read_metrics(by_id("p2-data"))                      # what `make progress` reads
    assert shown is not None and shown["quick"] is False and shown["finished_utc"] == metrics["finished_utc"]


def test_official_python_batches_and_image_folders_feed_the_same_split(tmp_path):
    """CIFAR's python batches (torchvision's download) and a custom image folder both work."""
    from tests.test_data_sources import write_cifar_folder, write_image_folder

    write_cifar_folder(tmp_path / "batches", per_batch=100)
    splits = cifar_splits(data_dir=tmp_path / "batches", announce=lambda m: None)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (450, 50, 100)
    tree = write_image_folder(tmp_path / "pets", per_class=20, classes=("cat", "dog"))
    custom = cifar_splits(dataset=f"imagefolder:{tree}", announce=lambda m: None)
    assert custom.classes == ["cat", "dog"] and len(custom.train) + len(custom.val) == 40
    assert custom.val.class_counts(2) == [2, 2]
