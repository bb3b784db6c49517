"""DistributedDataParallel on the CPU (gloo, loopback): 2 processes with half the batch each reach the
same weights as 1 process with the whole batch, within 1e-5 (float sums in a different order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.loaders import TensorLoader
from tests.ddp_worker import synthetic_split

pytestmark = [pytest.mark.foundation, getattr(pytest.mark, "p2-cnn")]
ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"
TOLERANCE = 1e-5


def run(out: Path, nproc: int, *flags: str) -> dict:
    out.mkdir()
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    done = subprocess.run([*launcher, str(WORKER), "--out", str(out), *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return {"weights": torch.load(out / "weights.pt", weights_only=True),
            **json.loads((out / "history.json").read_text())}


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    single, ddp = run(tmp_path / "one", 1), run(tmp_path / "two", 2)
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    # Trainer.close() frees the DDP wrapper before the group goes; one left to interpreter exit can abort a rank
    assert ddp["wrapper_freed_by_close"] is True and single["wrapper_freed_by_close"] is None
    assert ddp["steps_per_epoch"] == single["steps_per_epoch"] == 512 // 64
    worst = max((single["weights"][k] - ddp["weights"][k]).abs().max().item() for k in single["weights"])
    assert worst <= TOLERANCE, worst
    for a, b in zip(single["history"], ddp["history"]):   # losses summed over both shards, all-reduced
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOLERANCE)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], abs=1e-9)
    assert single["history"][-1]["train_loss"] < single["history"][0]["train_loss"]   # it did learn


def test_shards_cover_each_global_batch_exactly_once():
    split = synthetic_split(96)
    whole = TensorLoader(split, 32, seed=3, drop_last=True)
    halves = [TensorLoader(split, 16, seed=3, drop_last=True, rank=r, world_size=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *halves):
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)
    with pytest.raises(ValueError, match="drop_last=True"):
        TensorLoader(split, 16, rank=0, world_size=2)


@pytest.mark.slow
def test_every_rank_evaluates_the_same_model(tmp_path):
    """BatchNorm's running statistics are synchronised after each epoch, so ranks agree on validation.

    Without it each rank keeps the statistics of its own shard's last step, the
    ranks report different validation losses, and a decision taken on them
    (early stopping) would be taken by some ranks only.
    """
    out = tmp_path / "bn"
    run(out, 2, "--batchnorm")
    buffers = [torch.load(out / f"buffers_rank{r}.pt", weights_only=True) for r in range(2)]
    assert buffers[0].keys() == buffers[1].keys() and any("running_mean" in k for k in buffers[0])
    for name in buffers[0]:
        assert torch.equal(buffers[0][name], buffers[1][name]), name
    losses = [json.loads((out / f"val_rank{r}.json").read_text()) for r in range(2)]
    assert losses[0] == losses[1] and len(losses[0]) == 3
