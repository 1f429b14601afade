"""The two frames the phantom is drawn in, and the soft step every mask is built from.

* Image frame (x, y) in [-1, 1]: y points down, x to the image right (= the patient's left).
* Anatomical frame (u, v) of the patient: reached from (x, y) by the scan's pose (rotation,
  shift, magnification). The static anatomy lives on a square anatomical grid covering
  u, v in [-ANATOMY_HALF_WIDTH, ANATOMY_HALF_WIDTH], wide enough that a rotated, shifted,
  shrunken scan never looks past its edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Half-width of the anatomical grid, in anatomical units (the image spans [-1, 1]).
ANATOMY_HALF_WIDTH = 1.45


def soft_step(x, edge):
    """Soft step 0 → 1 around ``x = 0``, linear over a width ``edge`` (a cheap anti-aliased mask).

    Masks are written as ``soft_step(inside_distance, edge)``: 1 well inside, 0 well outside.
    """
    return np.minimum(np.maximum(0.5 + x / edge, 0.0), 1.0)


def pixel_grid(n: int, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an ``n`` x ``n`` grid spanning [-half_width, half_width].

    Returns ``(x, y)`` as a row ``(1, n)`` and a column ``(n, 1)`` (broadcast to a grid); y down.
    """
    centres = (np.arange(n, dtype=np.float64) + 0.5) / n * 2 * half_width - half_width
    return centres[None, :], centres[:, None]


def image_to_anatomy(x, y, rotation, shift_x, shift_y, scale):
    """Anatomical coordinates (u, v) seen at image position (x, y) under a scan's pose.

    Args:
        x, y: image-frame coordinates (broadcastable).
        rotation: in-plane rotation of the patient, radians, shape (S, 1, 1).
        shift_x, shift_y: patient offset in image half-widths, shape (S, 1, 1).
        scale: magnification (> 1 = patient looks bigger), shape (S, 1, 1).

    Returns:
        ``(u, v)``, each of shape (S, len(y), len(x)).
    """
    cos, sin = np.cos(rotation), np.sin(rotation)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / scale
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / scale
    return u, v


def warp_to_scans(layers: dict, u, v, n_grid: int) -> dict:
    """Resample static layers, drawn on the ``n_grid``-pixel anatomical grid, at (u, v) (bilinear).

    Args:
        layers: name → (n_grid, n_grid) array on the anatomical grid.
        u, v: anatomical coordinates of every output pixel, shape (S, R, R).
        n_grid: side of the anatomical grid in pixels.

    Returns:
        name → (S, R, R) array; outside the grid the edge value is repeated.
    """
    cell = 2 * ANATOMY_HALF_WIDTH / n_grid
    rows = (v + ANATOMY_HALF_WIDTH) / cell - 0.5
    cols = (u + ANATOMY_HALF_WIDTH) / cell - 0.5
    coords = np.stack([rows, cols]).reshape(2, -1)
    return {name: ndimage.map_coordinates(layer, coords, order=1, mode="nearest").reshape(u.shape)
            for name, layer in layers.items()}
