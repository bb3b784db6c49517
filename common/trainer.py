"""The Trainer: the training loop every milestone after day 18 shares.

The loop itself is the one you wrote by hand in phase 1::

    for x, y in loader:
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

Everything else here is what a real project needs around those five lines:

* **device and precision** - bf16 autocast on a CUDA GPU that has it, fp16
  with a gradient scaler on one that does not, fp32 on CPU;
* **optimiser and schedule** - SGD / Adam / AdamW, a per-step learning-rate
  multiplier with warm-up (:mod:`common.schedules`), weight decay on weights
  but not on biases and norm parameters, label smoothing, gradient clipping;
* **repeatability** - every epoch reseeds from ``(seed, epoch)``, so a run
  resumed from a checkpoint draws the same random numbers as one that never
  stopped (tested, on CPU);
* **no host sync per step** - loss and accuracy are summed on the device and
  read once per epoch (and every ``log_every`` steps for the progress bar);
* **history, early stopping, checkpoints** - per-epoch figures, atomic
  checkpoint files loaded with ``weights_only=True``, ``metrics.json`` and a
  curves PNG in the run folder;
* **several processes** - started by ``torchrun``, the model is wrapped in
  ``DistributedDataParallel`` (gradients averaged across ranks), per-rank
  sums are all-reduced before they are reported, BatchNorm statistics are
  made identical after each epoch (so every rank evaluates the same model),
  and only rank 0 prints and writes files (:mod:`common.distributed`);
* **compilation** - ``compile=True`` runs the model through ``torch.compile``
  (worth it on a GPU for long runs; its first steps pay for compiling).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn

from common import distributed
from common.augment import flip_averaged_logits
from common.device import autocast_dtype, describe_device, resolve_device, seed_everything
from common.runs import atomic_torch_save, update_metrics
from common.schedules import lr_multiplier

CHECKPOINT_FORMAT = "ml60-checkpoint-v1"


@dataclass
class TrainConfig:
    """Everything that defines a training run, saved inside every checkpoint."""

    epochs: int = 10
    optimizer: str = "adam"          # sgd | adam | adamw
    lr: float = 1e-3                 # the peak learning rate
    momentum: float = 0.9            # SGD only
    nesterov: bool = True            # SGD only
    weight_decay: float = 0.0
    schedule: str = "constant"       # constant | step | cosine | onecycle
    warmup_epochs: float = 0.0
    step_every: int = 10             # step schedule: epochs between decays
    step_gamma: float = 0.1          # step schedule: decay factor
    final_lr_fraction: float = 0.0   # cosine / onecycle: where the lr ends
    label_smoothing: float = 0.0
    grad_clip: float | None = None   # max global gradient norm
    precision: str = "auto"          # auto | fp32 | bf16 | fp16
    channels_last: bool = False      # NHWC memory format for conv nets
    seed: int = 0
    deterministic: bool = False
    early_stopping_patience: int | None = None  # epochs without improvement
    monitor: str = "val_accuracy"    # val_accuracy | train_accuracy (higher is better) | val_loss | train_loss (lower)
    log_every: int = 50              # steps between progress-bar loss reads
    checkpoint_every: int = 1        # epochs between last.pt writes (0: never)
    compile: bool = False            # torch.compile the model (GPU, long runs)

    MONITORS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")

    def __post_init__(self):
        """Refuse a value that would otherwise be ignored: a misspelt ``monitor`` used to turn early stopping off."""
        if self.monitor not in self.MONITORS:
            raise ValueError(f"unknown monitor {self.monitor!r}; choose one of {', '.join(self.MONITORS)}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be at least 1 epoch, got {self.early_stopping_patience}")

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    lr: float
    seconds: float
    images_per_s: float
    val_loss: float | None = None
    val_accuracy: float | None = None


@dataclass
class _Best:
    value: float | None = None
    epoch: int = 0
    stale_epochs: int = 0


class Trainer:
    """Train ``model`` with ``config`` on ``device``, writing into ``run_dir`` if given.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to class logits.
        config: a :class:`TrainConfig`.
        device: ``auto|cpu|cuda|mps`` or a ``torch.device`` (default: ``$DEVICE`` or auto).
        run_dir: where checkpoints, ``metrics.json`` and ``curves.png`` go (None: nowhere).
        announce: where per-epoch summary lines go (``print`` by default).
        progress: show a per-step progress bar when output is a terminal.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None, *, device=None,
                 run_dir: str | Path | None = None, announce: Callable[[str], None] = print,
                 progress: bool = True):
        self.config = config or TrainConfig()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        seed_everything(self.config.seed, self.config.deterministic)
        # Distributed only when torchrun started us and the process group is up (common.distributed.init).
        up = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.dist = distributed.from_group() if up else distributed.DistInfo()
        self.raw_model = model.to(self.device)   # what checkpoints hold: never the DDP wrapper
        if self.config.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        self.model = self.raw_model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.raw_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            self.model = torch.compile(self.model)
        main = self.dist.is_main
        self.run_dir = Path(run_dir) if run_dir is not None and main else None
        self.announce = announce if main else (lambda *_: None)
        self.progress = progress and main
        self.fused = self.device.type == "cuda"   # fused optimiser kernels (see _make_optimizer)
        self.amp_dtype = autocast_dtype(self.device, self.config.precision)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.history: list[dict] = []
        self.epochs_done = 0
        self.best = _Best()

    # ------------------------------------------------------------------ setup

    def close(self) -> None:
        """Let go of the DDP wrapper; call it before ``distributed.shutdown()``.

        The wrapper's reducer holds the process group and its communication
        threads.  Left alive past ``destroy_process_group``, it is freed while
        the interpreter exits, and a rank can abort there ("terminate called
        without an active exception": 3 runs in 60 of tests/ddp_worker.py on two
        busy cores, none in 170 after this).  On one process it does nothing;
        afterwards ``self.model`` is the plain model, so evaluation still works.
        """
        self.model = self.raw_model   # the wrapper's last reference: it is freed here, not at exit

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        # Decay weight matrices and kernels, not biases or norm scales: shrinking
        # a BatchNorm's gamma towards zero does not regularise, it just hurts.
        decay = [p for p in self.raw_model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.raw_model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # On a GPU, the fused implementations update every parameter in one kernel
        # launch instead of several per tensor: same arithmetic, less launch overhead
        # (it dominates small models' steps).
        fused = {"fused": True} if self.fused else {}
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **fused)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(groups, lr=cfg.lr, **fused)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=cfg.lr, **fused)
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam or adamw")

    def _make_scheduler(self, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        cfg = self.config
        total = cfg.epochs * steps_per_epoch

        def multiplier(step: int) -> float:
            return lr_multiplier(step, total_steps=total, steps_per_epoch=steps_per_epoch,
                                 schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                                 step_every=cfg.step_every, step_gamma=cfg.step_gamma,
                                 final_lr_fraction=cfg.final_lr_fraction)

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, multiplier)

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ the loop

    def fit(self, train_loader: Iterable, val_loader: Iterable | None = None, *,
            resume_from: str | Path | None = None,
            on_epoch_end: Callable[[dict], None] | None = None) -> list[dict]:
        """Train for ``config.epochs`` epochs (minus those a resumed checkpoint already did).

        ``on_epoch_end(record)`` is called after each epoch with that epoch's
        history entry; raising from it stops training (a hyperparameter
        search uses this to prune a trial that is going nowhere).
        """
        cfg = self.config
        if cfg.early_stopping_patience is not None and val_loader is None:
            raise ValueError("early stopping watches a validation metric: pass val_loader")
        self.scheduler = self._make_scheduler(len(train_loader))
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self.announce(f"[train] resumed from {resume_from} after epoch {self.epochs_done}")
        self.announce(f"[train] {cfg.epochs} epochs on {describe_device(self.device)}, precision "
                      f"{self.amp_dtype or torch.float32}, {cfg.optimizer} lr {cfg.lr:g} "
                      f"({cfg.schedule}), {len(train_loader)} steps/epoch")
        for epoch in range(self.epochs_done, cfg.epochs):
            record = self.train_epoch(train_loader, epoch)
            if val_loader is not None:
                val = self.evaluate(val_loader)
                record.val_loss, record.val_accuracy = val["loss"], val["accuracy"]
            self.history.append(asdict(record))
            self.epochs_done = epoch + 1
            self.announce(self._epoch_line(record))
            improved = self._update_best(record)
            if self.run_dir is not None:
                if cfg.checkpoint_every and (self.epochs_done % cfg.checkpoint_every == 0
                                             or self.epochs_done == cfg.epochs):
                    self.save_checkpoint(self.run_dir / "last.pt")
                if improved:
                    self.save_checkpoint(self.run_dir / "best.pt")
            if on_epoch_end is not None:
                on_epoch_end(self.history[-1])
            if cfg.early_stopping_patience is not None and self.best.stale_epochs >= cfg.early_stopping_patience:
                self.announce(f"[train] early stop: {cfg.monitor} has not improved for "
                              f"{self.best.stale_epochs} epochs (best {self.best.value:.4f} at epoch {self.best.epoch})")
                break
        if self.run_dir is not None:
            self.write_outputs()
        return self.history

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: cross-entropy with the labels.

        A subclass changes what the model learns from by overriding this one
        method: knowledge distillation (``phase3_production/distill.py``) adds
        what a teacher model says about the same images ``x``.
        """
        return self.criterion(logits, y)

    def train_epoch(self, loader: Iterable, epoch: int) -> EpochRecord:
        """One pass over ``loader``. Loss and accuracy are summed on the device, read once."""
        cfg = self.config
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc.: same stream after a resume
        for obj in (loader, getattr(loader, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        start = time.perf_counter()
        bar = self._bar(len(loader), f"epoch {epoch + 1}/{cfg.epochs}")
        for step, (x, y) in enumerate(loader):
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.model(x)
                loss = self.loss(logits, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if bar is not None:
                bar.update(1)
                if step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.4f}")  # the only per-step sync, every N steps
        if bar is not None:
            bar.close()
        if self.dist.enabled:   # every rank saw its own shard: add them up
            totals = torch.stack([loss_sum.float(), correct.float(),
                                  torch.tensor(float(seen), device=self.device)])
            loss_sum, correct, seen = distributed.all_reduce_sum(totals).unbind()
            seen = int(seen.item())
            distributed.broadcast_buffers(self.raw_model)   # every rank evaluates the same model
        train_loss = loss_sum.item() / max(1, seen)  # .item() waits for the GPU: read once
        seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"epoch {epoch + 1}: training loss is {train_loss}; lower the learning "
                                     "rate or enable grad_clip")
        return EpochRecord(epoch=epoch + 1, train_loss=train_loss, train_accuracy=correct.item() / max(1, seen),
                           lr=self.optimizer.param_groups[0]["lr"], seconds=seconds,
                           images_per_s=seen / seconds if seconds > 0 else float("nan"))

    @torch.inference_mode()
    def evaluate(self, loader: Iterable, *, flip: bool = False) -> dict:
        """Mean loss and accuracy over ``loader``, in eval mode, without gradients (``flip``: see predict)."""
        logits, labels = self.predict(loader, flip=flip)
        loss = nn.functional.cross_entropy(logits, labels).item()
        return {"loss": loss, "accuracy": (logits.argmax(1) == labels).float().mean().item()}

    @torch.inference_mode()
    def predict(self, loader: Iterable, *, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits (float32, on the CPU) and labels for ``loader``, in eval mode.

        ``flip=True`` is test-time augmentation for images whose mirror image is
        just as likely (CIFAR-10, not digits): see
        :func:`common.augment.flip_averaged_logits`.

        Under DDP every rank evaluates the whole (unsharded) loader with the
        plain model: the weights are identical on every rank, and so are the
        BatchNorm statistics after each epoch's synchronisation, so every rank
        gets the same figures and no rank waits.
        """
        model = self.raw_model
        model.eval()
        all_logits, all_labels = [], []
        for x, y in loader:
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = flip_averaged_logits(model, x) if flip else model(x)
            all_logits.append(logits.float().cpu())
            all_labels.append(y.cpu())
        return torch.cat(all_logits), torch.cat(all_labels)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _bar(self, total: int, desc: str):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        # disable=None: tqdm switches itself off when stderr is not a terminal (CI, logs)
        return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None, mininterval=0.5)

    def _epoch_line(self, r: EpochRecord) -> str:
        line = (f"epoch {r.epoch:>3}/{self.config.epochs}  train loss {r.train_loss:.4f} "
                f"acc {100 * r.train_accuracy:6.2f}%")
        if r.val_loss is not None:
            line += f"  val loss {r.val_loss:.4f} acc {100 * r.val_accuracy:6.2f}%"
        return line + f"  lr {r.lr:.2e}  {r.seconds:6.1f}s  {r.images_per_s:,.0f} img/s"

    def _update_best(self, record: EpochRecord) -> bool:
        key = self.config.monitor
        value = getattr(record, key, None)
        if value is None:
            return False
        higher_is_better = not key.endswith("loss")
        better = (self.best.value is None or
                  (value > self.best.value if higher_is_better else value < self.best.value))
        if better:
            self.best = _Best(value=value, epoch=record.epoch, stale_epochs=0)
        else:
            self.best.stale_epochs += 1
        return better

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epochs_done": self.epochs_done,
            "history": self.history,
            "config": asdict(self.config),
            "best": {"value": self.best.value, "epoch": self.best.epoch, "stale_epochs": self.best.stale_epochs},
        }

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint atomically: to a temporary file, then renamed into place."""
        return atomic_torch_save(self.checkpoint_state(), Path(path))

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore model, optimiser, schedule and history from ``path``.

        ``weights_only=True`` restricts unpickling to tensors and plain
        containers, so a checkpoint from elsewhere cannot run code on load.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise RuntimeError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise RuntimeError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
        try:
            self.raw_model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise RuntimeError(f"{path}: the checkpoint does not match this model: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:   # the saved flag belongs to the device that saved it
            group["fused"] = True if self.fused else None
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epochs_done = int(state["epochs_done"])
        self.history = list(state["history"])
        best = state["best"]
        self.best = _Best(value=best["value"], epoch=best["epoch"], stale_epochs=best["stale_epochs"])

    # ------------------------------------------------------------------ outputs

    def write_outputs(self) -> None:
        """``metrics.json`` (history, best epoch, config, device) and ``curves.png``."""
        from common.benchmark import environment_stamp
        from common.plots import plot_history

        if self.run_dir is None:
            raise ValueError("this Trainer has no run_dir: pass run_dir= to write metrics.json and curves.png")
        update_metrics(self.run_dir, history=self.history, config=asdict(self.config),
                       best={"monitor": self.config.monitor, "value": self.best.value, "epoch": self.best.epoch},
                       device=describe_device(self.device), environment=environment_stamp())
        plot_history(self.history, self.run_dir / "curves.png")
