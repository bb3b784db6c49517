"""Data parallelism with PyTorch's own engine: DistributedDataParallel under ``torchrun``.

The idea in one paragraph: start N copies of the same script (one per GPU,
or N processes on a CPU).  Each holds a full copy of the model and trains on
its own slice of every global batch.  After ``loss.backward()``, DDP averages
the gradients across the copies (an all-reduce, overlapped with the backward
pass), so every copy takes the same optimiser step and the weights stay
identical.  N processes with a per-process batch of B/N compute the same
update as one process with batch B - which the tests check.

``torchrun --standalone --nproc_per_node=N script.py`` starts the copies and
tells each who it is through environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).  The
backend is NCCL between GPUs, gloo between CPU processes.

Rules every distributed script follows, all visible in p2-cnn:

* each rank reads only its shard of each batch (:class:`common.loaders.TensorLoader`'s
  ``rank``/``world_size``, or a ``DistributedSampler`` on the classic path,
  with ``set_epoch`` so the shuffle changes every epoch);
* only rank 0 prints progress and writes checkpoints, metrics and pictures;
* figures summed over a rank's shard (loss, correct answers) are all-reduced
  before they are reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """Who this process is, from torchrun's variables (a plain run is rank 0 of 1)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def from_group() -> DistInfo:
    """Who this process is, asked of the process group itself (however it was started)."""
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def init(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun; on CUDA, pin this rank to its own GPU."""
    info = from_env()
    if not info.enabled or dist.is_initialized():
        return info
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun; other devices are unchanged."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (in place) when distributed; a no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm's running mean and variance).

    DDP copies rank 0's buffers to the others at the start of each training
    forward pass, but that pass then updates them from each rank's own
    shard: after an epoch's last step the ranks' running statistics differ
    slightly.  Evaluated as they are, the ranks would disagree about the
    validation accuracy - and a decision taken on it (early stopping, a
    pruned trial) would be taken by some ranks only, leaving the others
    waiting forever at the next collective call.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the group together: a rank that tears down while another still talks to it can abort.

    Drop every DDP wrapper first (``Trainer.close()``): one that outlives the
    group is freed during interpreter exit, where a rank can abort.
    """
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()
