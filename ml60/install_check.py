"""``python -m ml60 install-check``: what ``make install`` put in the venv, and whether it works together.

torch and torchvision are built as a pair: a torchvision wheel registers its C++ operators (``nms`` and
the rest) against the torch it was compiled for, and with any other torch build it fails on ``import``
("operator torchvision::nms does not exist"). That failure would otherwise surface on day 13, in the
middle of a lesson; here it stops the install, and says which pair was found and how to get a matching one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def folder_bytes(root: Path) -> int:
    """The bytes of every file under ``root`` (links are not followed), as ``du`` counts a venv."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def describe_build(torch) -> str:
    """``"CUDA 13.0 build"``, ``"ROCm 6.2 build"`` or ``"CPU-only build"``: which kernels the wheel carries."""
    if getattr(torch.version, "cuda", None):
        return f"CUDA {torch.version.cuda} build"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip} build"
    return "CPU-only build"


def main() -> int:
    try:
        import torch
    except Exception as exc:  # a broken or missing wheel: say it here, not on day 4
        print(f"install-check: torch does not import ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    try:
        import torchvision
    except Exception as exc:
        print(f"install-check: torchvision does not import with torch {torch.__version__} "
              f"({type(exc).__name__}: {exc}).\nThe two are built as a pair: install the torchvision release made "
              "for this torch from the same index (for CPU=1, the index in TORCH_CPU_INDEX), in a new .venv.",
              file=sys.stderr)
        return 1
    accelerator = "a CUDA GPU is visible" if torch.cuda.is_available() else "no GPU visible (the course runs on CPU)"
    size = folder_bytes(Path(sys.prefix)) / 1e9
    print(f"install-check: torch {torch.__version__} ({describe_build(torch)}), torchvision {torchvision.__version__}; "
          f"{accelerator}; {sys.prefix} holds {size:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
