"""Pictures a learner would rather look at than read: curves and image grids.

matplotlib runs with the file-only ``Agg`` backend, so this works on a
server with no screen.  Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_history(history: Sequence[dict], path: Path, title: str | None = None) -> Path:
    """Loss and accuracy per epoch, train beside validation when there is one."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        losses = [h.get(f"{split}_loss") for h in history]
        accs = [h.get(f"{split}_accuracy") for h in history]
        if any(v is not None for v in losses):
            ax_loss.plot(epochs, losses, style, label=split, markersize=3)
            ax_acc.plot(epochs, [100 * a if a is not None else None for a in accs], style, label=split,
                        markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save(fig, path)


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, *, columns: int = 8,
               title: str | None = None, title_colors: Sequence[str] | None = None) -> Path:
    """A grid of uint8 images ``(N, C, H, W)`` with a caption under each."""
    images = np.asarray(images)
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.transpose(1, 2, 0))
        color = title_colors[i] if title_colors is not None else "black"
        ax.set_title(titles[i], fontsize=8, color=color)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
