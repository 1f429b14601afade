"""The notebooks' one image-grid helper and the plot style every notebook shares."""

from __future__ import annotations

import numpy as np

__all__ = ["set_style", "image_grid"]


def set_style() -> None:
    """One consistent look: grey-scale images, small titles, seaborn's ticks theme."""
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "image.cmap": "gray", "axes.titlesize": 10})
    import seaborn

    seaborn.set_theme(context="notebook", style="ticks", rc={"image.cmap": "gray"})


def _as_uint8_images(images) -> np.ndarray:
    """(N, H, W) uint8 from uint8 (N, H, W) / (N, 1, H, W), or float in [-1, 1] (tensors too)."""
    x = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"image_grid shows one-channel images, got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, 1, H, W), got shape {x.shape}")
    if x.dtype != np.uint8:
        x = np.clip(np.round((x.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x


def image_grid(images, cols: int, titles=None, row_labels=None, borders=None, size: float = 1.2,
               title_size: int = 7, suptitle: str | None = None):
    """A grid of images, row-major, ``cols`` per row → the matplotlib Figure.

    Args:
        images: (N, H, W) uint8, (N, 1, H, W) uint8 or float in [-1, 1] (numpy or torch).
        cols: images per row (>= 1); rows = ceil(N / cols).
        titles: None, one title per image, or a list of ``cols`` column titles (first row).
        row_labels: None or one label per row (left of the first column).
        borders: None or one matplotlib colour (or None) per image: a thick frame.
        size: inches per cell; title_size: font size of titles and labels.
    """
    import matplotlib.pyplot as plt

    grid = _as_uint8_images(images)
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = max(1, -(-len(grid) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    per_image = titles is not None and len(titles) == len(grid) and len(grid) != cols
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(grid):
            ax.axis("off")
            continue
        ax.imshow(grid[i], cmap="gray", vmin=0, vmax=255)
        if titles is not None and (per_image or i < cols) and i < len(titles) and titles[i]:
            ax.set_title(titles[i], fontsize=title_size)
        if borders is not None and i < len(borders) and borders[i] is not None:
            for side in ax.spines.values():
                side.set(color=borders[i], linewidth=3)
    if row_labels is not None:
        for r, text in enumerate(row_labels[:rows]):
            axes[r, 0].set_ylabel(text, fontsize=title_size, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.35 if titles is not None and per_image else 0.05)
    return fig
