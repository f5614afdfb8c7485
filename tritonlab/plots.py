"""Figures for the notebooks: shown inline and saved as PNG under the output folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from . import settings


def save(fig, name: str) -> Path:
    """Save `fig` as `<output>/figures/<name>.png` and return the path."""
    folder = settings.figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def show_predictions(images: Sequence[Path | str], predictions: Sequence, title: str = "",
                     name: str | None = None, columns: int = 3):
    """Each image with the label and probability Triton returned for it."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, pred in zip(axes.flat, images, predictions):
        ax.imshow(Image.open(path).convert("RGB"))
        ax.set_title(f"{Path(path).stem}\n→ {pred.label} ({pred.probability:.2f})", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    if name:
        print(f"Figure saved to {save(fig, name)}")
    return fig
