"""The Trainer: it can learn, it resumes exactly, it writes what it promises."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from common.augment import BatchAugment
from common.data import Split
from common.loaders import TensorLoader
from common.schedules import lr_multiplier
from common.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.foundation


def quiet(_msg: str) -> None:
    pass


def make_split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8),
                 torch.randint(0, 10, (n,), generator=g))


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 6 * 6, 10))


def loader(split: Split, batch_size=16, shuffle=True, augment=True) -> TensorLoader:
    aug = BatchAugment(crop_pad=2, flip=True) if augment else None
    return TensorLoader(split, batch_size, mean=(0.5,), std=(0.25,), shuffle=shuffle, augment=aug, seed=7)


def test_overfits_one_batch():
    """The cheapest proof that a training loop works: it can memorise one batch."""
    batch = make_split(32)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 128), nn.ReLU(), nn.Linear(128, 10))
    trainer = Trainer(model, TrainConfig(epochs=150, lr=3e-3), device="cpu", announce=quiet, progress=False)
    history = trainer.fit(loader(batch, batch_size=32, augment=False))
    assert history[0]["train_loss"] > 2.0  # random labels: ~ln(10) at the start
    assert history[-1]["train_loss"] < 0.05, f"final loss {history[-1]['train_loss']:.4f} (bound 0.05)"
    assert history[-1]["train_accuracy"] == 1.0


class InterruptAt:
    """Wraps a loader and raises KeyboardInterrupt when epoch ``stop_epoch`` starts."""

    def __init__(self, inner, stop_epoch: int):
        self.inner, self.stop_epoch, self.epoch = inner, stop_epoch, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        if self.epoch == self.stop_epoch:
            raise KeyboardInterrupt("simulated crash")
        return iter(self.inner)


def test_resume_equals_uninterrupted_run(tmp_path):
    train, val = make_split(96, seed=1), make_split(32, seed=2)
    config = TrainConfig(epochs=4, optimizer="sgd", lr=0.05, schedule="cosine", warmup_epochs=1,
                         weight_decay=5e-4, label_smoothing=0.1, grad_clip=5.0, seed=3, deterministic=True)

    straight = Trainer(tiny_cnn(0), config, device="cpu", run_dir=tmp_path / "a", announce=quiet, progress=False)
    straight.fit(loader(train), loader(val, shuffle=False, augment=False))

    first = Trainer(tiny_cnn(0), config, device="cpu", run_dir=tmp_path / "b", announce=quiet, progress=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(InterruptAt(loader(train), stop_epoch=2), loader(val, shuffle=False, augment=False))
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epochs_done"] == 2

    resumed = Trainer(tiny_cnn(99), config, device="cpu", run_dir=tmp_path / "b", announce=quiet, progress=False)
    resumed.fit(loader(train), loader(val, shuffle=False, augment=False), resume_from=tmp_path / "b" / "last.pt")

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    keys = ("train_loss", "val_loss", "val_accuracy", "lr")
    assert [[h[k] for k in keys] for h in straight.history] == [[h[k] for k in keys] for h in resumed.history]


def test_outputs_checkpoints_and_metrics(tmp_path):
    trainer = Trainer(tiny_cnn(0), TrainConfig(epochs=2, lr=1e-2), device="cpu", run_dir=tmp_path,
                      announce=quiet, progress=False)
    trainer.fit(loader(make_split(48)), loader(make_split(16, 5), shuffle=False, augment=False))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "curves.png", "last.pt", "metrics.json"], names  # no temp files left
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
            "images_per_s"} <= set(metrics["history"][0])
    assert metrics["environment"]["torch"] == torch.__version__
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # plain tensors and containers only
    assert state["epochs_done"] == 2


def test_bad_checkpoints_get_clear_errors(tmp_path):
    trainer = Trainer(tiny_cnn(0), TrainConfig(epochs=1), device="cpu", announce=quiet, progress=False)
    path = trainer.save_checkpoint(tmp_path / "ok.pt")
    other = Trainer(nn.Sequential(nn.Flatten(), nn.Linear(144, 10)), TrainConfig(epochs=1), device="cpu",
                    announce=quiet, progress=False)
    with pytest.raises(RuntimeError, match=r"ok.pt.*does not match this model"):
        other.load_checkpoint(path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RuntimeError, match="broken.pt"):
        trainer.load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        trainer.load_checkpoint(tmp_path / "missing.pt")


def test_early_stopping_stops_when_validation_stalls():
    # lr = 0 and no BatchNorm statistics: nothing changes, so validation accuracy
    # never improves after epoch 1; patience 2 means epochs 2 and 3 run, then stop.
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    trainer = Trainer(model, TrainConfig(epochs=20, lr=0.0, early_stopping_patience=2), device="cpu",
                      announce=quiet, progress=False)
    history = trainer.fit(loader(make_split(32)), loader(make_split(16, 4), shuffle=False, augment=False))
    assert len(history) == 3


@pytest.mark.parametrize("field, value, message", [("monitor", "val_acc", "unknown monitor 'val_acc'"),
                                                   ("early_stopping_patience", 0, "at least 1 epoch")])
def test_a_misspelt_setting_is_refused_not_ignored(field, value, message):
    """A misspelt monitor used to match no history field, so early stopping never fired and no best.pt was written."""
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({field: value})


def test_early_stopping_on_validation_loss():
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    config = TrainConfig(epochs=20, lr=0.0, early_stopping_patience=1, monitor="val_loss")
    trainer = Trainer(model, config, device="cpu", announce=quiet, progress=False)
    history = trainer.fit(loader(make_split(32)), loader(make_split(16, 4), shuffle=False, augment=False))
    assert len(history) == 2


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adamw", "onecycle"), ("adam", "constant")])
def test_optimisers_and_schedules_train(optimizer, schedule):
    config = TrainConfig(epochs=3, optimizer=optimizer, lr=0.01 if optimizer == "sgd" else 1e-3,
                         schedule=schedule, step_every=1, weight_decay=1e-4)
    trainer = Trainer(tiny_cnn(0), config, device="cpu", announce=quiet, progress=False)
    history = trainer.fit(loader(make_split(64)))
    assert all(math.isfinite(h["train_loss"]) for h in history)
    if schedule == "step":
        assert [round(h["lr"], 6) for h in history] == [0.001, 0.0001, 0.00001]


def test_weight_decay_skips_biases_and_norm_parameters():
    trainer = Trainer(tiny_cnn(0), TrainConfig(weight_decay=0.1), device="cpu", announce=quiet, progress=False)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim > 1 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])


def test_schedule_shapes():
    kw = dict(total_steps=100, steps_per_epoch=10)
    assert lr_multiplier(0, schedule="constant", **kw) == 1.0
    warm = [lr_multiplier(s, schedule="cosine", warmup_epochs=1, **kw) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_multiplier(10, schedule="cosine", warmup_epochs=1, **kw) == pytest.approx(1.0)
    assert lr_multiplier(100, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-9)
    assert lr_multiplier(55, schedule="cosine", warmup_epochs=1, **kw) == pytest.approx(0.5)
    peak = max(range(100), key=lambda s: lr_multiplier(s, schedule="onecycle", **kw))
    assert peak == 29 and lr_multiplier(99, schedule="onecycle", **kw) < 0.02
    assert lr_multiplier(25, schedule="step", step_every=2, step_gamma=0.5, **kw) == 0.5
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, schedule="linear", **kw)


def test_device_choice_is_explicit():
    from common.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_flip_test_time_augmentation_averages_an_image_and_its_mirror():
    model = tiny_cnn(0)
    trainer = Trainer(model, TrainConfig(precision="fp32"), device="cpu", announce=quiet, progress=False)
    test = loader(make_split(40, seed=3), batch_size=16, shuffle=False, augment=False)
    plain, labels = trainer.predict(test)
    flipped, same_labels = trainer.predict(test, flip=True)
    model.eval()
    with torch.no_grad():   # the definition, written out: one forward pass per view, then the mean
        by_hand = torch.cat([(model(x) + model(torch.flip(x, dims=[3]))) / 2 for x, _ in test])
    assert torch.equal(labels, same_labels)
    torch.testing.assert_close(flipped, by_hand)
    assert not torch.allclose(flipped, plain)   # the mirror really changes the answer for this model
    accuracy = trainer.evaluate(test, flip=True)["accuracy"]
    assert accuracy == pytest.approx((flipped.argmax(1) == labels).float().mean().item())


def test_fused_optimiser_only_where_it_exists():
    """On a GPU the optimiser updates all parameters in one fused kernel; on a CPU it keeps the default."""
    trainer = Trainer(tiny_cnn(0), TrainConfig(optimizer="sgd"), device="cpu", announce=quiet, progress=False)
    assert not trainer.optimizer.defaults.get("fused")


def test_a_checkpoint_from_another_device_does_not_choose_the_optimiser_kernel(tmp_path):
    """A checkpoint saved on a GPU (fused optimiser) resumes on a CPU with the CPU's own choice."""
    trainer = Trainer(tiny_cnn(0), TrainConfig(epochs=1, optimizer="sgd"), device="cpu", announce=quiet,
                      progress=False)
    trainer.fit(loader(make_split(64)))
    path = trainer.save_checkpoint(tmp_path / "gpu.pt")
    state = torch.load(path, weights_only=True)
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True   # as a CUDA run saves it
    torch.save(state, path)
    resumed = Trainer(tiny_cnn(0), TrainConfig(epochs=2, optimizer="sgd"), device="cpu", announce=quiet,
                      progress=False)
    resumed.fit(loader(make_split(64)), resume_from=path)
    assert all(not group.get("fused") for group in resumed.optimizer.param_groups)
    assert resumed.epochs_done == 2
