"""Choosing where tensors live, at what precision, and how to make runs repeatable.

``DEVICE=auto`` (the default) picks CUDA if a GPU is there, then Apple's MPS,
then the CPU.  Asking for a device that is not present is an error, not a
quiet fallback: a learner who types ``DEVICE=cuda`` and gets CPU timings would
draw the wrong conclusions.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DEVICE_ENV = ("ML60_DEVICE", "DEVICE")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | None = None) -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into a ``torch.device``."""
    if name is None:
        name = next((os.environ[v] for v in DEVICE_ENV if os.environ.get(v)), "auto")
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda, but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}). "
                           "Use DEVICE=auto or DEVICE=cpu.")
    if kind == "mps" and not _mps_available():
        raise RuntimeError("DEVICE=mps, but this torch build or machine has no MPS backend. "
                           "Use DEVICE=auto or DEVICE=cpu.")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype for ``torch.autocast``, or None for plain fp32.

    ``auto`` means: bf16 on a CUDA GPU that supports it, fp16 on an older CUDA
    GPU (the Trainer then adds a gradient scaler), fp32 everywhere else.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels.

    ``deterministic=True`` trades some speed for bit-identical reruns on the
    same hardware (cuDNN autotuning off, deterministic algorithms only).
    Otherwise cuDNN autotuning is on: for each new convolution shape it times
    the available algorithms once and keeps the fastest, which pays off when
    every batch has the same shape (drop_last=True in the training loaders).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True
