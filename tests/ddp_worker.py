"""Train a small MLP with the Trainer on a fixed synthetic set; rank 0 writes the final weights and history.

Run alone (one process, the whole global batch) or under
``torchrun --standalone --nproc_per_node=N`` (N processes, global batch / N each):
tests/test_distributed.py compares the two.
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import distributed  # noqa: E402
from common.data import Split  # noqa: E402
from common.loaders import TensorLoader  # noqa: E402
from common.trainer import TrainConfig, Trainer  # noqa: E402


def synthetic_split(n: int = 512) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=generator, dtype=torch.uint8)
    labels = (images.float().mean(dim=(1, 2, 3)) > 127.5).long() + 2 * (images[:, 0, 0, 0] > 127).long()
    return Split(images, labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batchnorm", action="store_true",
                        help="a BatchNorm layer; every rank writes its buffers and its validation figures")
    args = parser.parse_args()
    device = torch.device("cpu")
    info = distributed.init(device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    norm = [nn.BatchNorm1d(32)] if args.batchnorm else []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), *norm, nn.ReLU(), nn.Linear(32, 4))
    loader = TensorLoader(synthetic_split(), args.global_batch // info.world_size, mean=(0.5,), std=(0.25,),
                          seed=0, drop_last=True, rank=info.rank, world_size=info.world_size)
    trainer = Trainer(model, TrainConfig(epochs=args.epochs, optimizer="sgd", lr=0.1, momentum=0.9,
                                         nesterov=False, precision="fp32", seed=0), device=device, progress=False)
    val = TensorLoader(synthetic_split(128), 64, mean=(0.5,), std=(0.25,), shuffle=False) if args.batchnorm else None
    history = trainer.fit(loader, val)
    if args.batchnorm:   # every rank: what it would evaluate with, and what it measured
        torch.save(dict(trainer.raw_model.named_buffers()), Path(args.out) / f"buffers_rank{info.rank}.pt")
        (Path(args.out) / f"val_rank{info.rank}.json").write_text(
            json.dumps([h["val_loss"] for h in history]))
    wrapper = weakref.ref(trainer.model) if trainer.model is not trainer.raw_model else None
    trainer.close()   # the DDP wrapper goes before the process group does (see Trainer.close)
    if info.is_main:
        torch.save(trainer.raw_model.state_dict(), Path(args.out) / "weights.pt")
        (Path(args.out) / "history.json").write_text(json.dumps({
            "history": history, "world_size": info.world_size, "steps_per_epoch": len(loader),
            "wrapper_freed_by_close": None if wrapper is None else wrapper() is None}))
    distributed.shutdown()


if __name__ == "__main__":
    main()
