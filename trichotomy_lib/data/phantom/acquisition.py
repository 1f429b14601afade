"""From density to a detector image, as a site's scanner would record and display it.

In order: window the density (per-scan exposure), block-average the supersampled render
(anti-aliasing), apply the display LUT (gamma, vendor S-curve), brightness and a heel-effect
gradient, detector blur, then per scan: support devices, quantum noise, collimation and the
burned-in side marker; finally quantise to 8 bits.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import pixel_grid, soft_step
from .params import per_scan


def default_supersample(image_size: int) -> int:
    """Supersampling factor: 2 up to 128 px (thin ribs and vessels alias otherwise), else 1."""
    return 2 if image_size <= 128 else 1


def block_average(images, image_size: int, factor: int):
    """(S, size x factor, size x factor) → (S, size, size) by averaging factor x factor blocks."""
    n_scans = len(images)
    return images.reshape(n_scans, image_size, factor, image_size, factor).mean(axis=(2, 4))


def display_lut(images, scans: list[dict], site_cfg: dict):
    """Gamma of the scan, then the vendor's S-shaped LUT (``lut_curve`` > 0 flattens, < 0 steepens)."""
    images = images ** per_scan(scans, lambda scan: scan["gamma"])
    if site_cfg["lut_curve"]:
        curve = site_cfg["lut_curve"]
        images = images + curve * images * (1 - images) * (images - 0.5) * -4
    return images


def support_devices(image, scan: dict, x, y, image_size: int):
    """Unlabelled confounders: three ECG electrodes (bright discs) and a line down the chest."""
    for electrode_x, electrode_y in scan["device_positions"]:
        image += 0.5 * soft_step(0.05 - np.hypot(x - electrode_x, y - electrode_y), 2.0 / image_size)
    line = soft_step(0.012 + 1.0 / image_size - np.abs(x - 0.05 - 0.1 * np.sin(2 * y)), 1.5 / image_size)
    image += 0.35 * line * (y < 0.2)
    return image


def collimate(image, scan: dict, site_cfg: dict, x, y, rng: np.random.Generator):
    """Outside the collimated field the site shows a flat grey (``collimation_value``) plus noise."""
    top, bottom, left, right = scan["collimation_margins"]
    inside = (y > -1 + 2 * top) & (y < 1 - 2 * bottom) & (x > -1 + 2 * left) & (x < 1 - 2 * right)
    image_size = image.shape[-1]
    outside = site_cfg["collimation_value"] + 0.02 * rng.standard_normal((image_size, image_size))
    return np.where(inside, image, outside)


def burn_in_marker(image, site_cfg: dict, scan: dict, x, y, image_size: int):
    """Burned-in side marker of the site: an 'L', a box or a bar near the site's corner, near-white.

    A site-specific, identity-free cue (as real markers are): the marker sits 0.82 from the
    centre in its corner, moved inward by the scan's ``marker_jitter``.
    """
    row, column = site_cfg["marker_corner"]
    jitter_x, jitter_y = scan["marker_jitter"]
    centre_y = (-0.82 if row == 0 else 0.82) + (jitter_y if row == 0 else -jitter_y)
    centre_x = (-0.82 if column == 0 else 0.82) + (jitter_x if column == 0 else -jitter_x)
    px = 1.0 / image_size
    kind = site_cfg["marker"]
    dx, dy = x - centre_x, y - centre_y
    if kind == "L":  # a vertical stroke and a foot to its right
        mask = (soft_step(0.03 + px - np.abs(dx + 0.04), px) * soft_step(0.09 + px - np.abs(dy), px)
                + soft_step(0.06 + px - np.abs(dx), px) * soft_step(0.03 + px - np.abs(dy - 0.06), px))
    elif kind == "box":  # a square with a darker core
        square_radius = np.maximum(np.abs(dx), np.abs(dy))
        mask = soft_step(0.07 + px - square_radius, px) * (1 - 0.6 * soft_step(0.035 - square_radius, px))
    else:  # bar
        mask = soft_step(0.10 + px - np.abs(dx), px) * soft_step(0.03 + px - np.abs(dy), px)
    alpha = np.clip(mask, 0, 1)
    return np.where(mask > 0, (1 - alpha) * image + alpha * 0.97, image)


def expose(density, scans: list[dict], site_cfg: dict, image_size: int, supersample: int,
           scan_rngs: list[np.random.Generator]) -> np.ndarray:
    """Density maps (S, R, R), R = image_size x supersample → uint8 images (S, image_size, image_size).

    Args:
        density: soft-tissue-unit density of every scan (see ``anatomy``).
        scans: the scans' acquisition draws (``params.sample_scan``).
        site_cfg: the site's style, a value of ``SITES``.
        image_size: output side in pixels.
        supersample: the factor ``density`` was rendered at (>= 1).
        scan_rngs: each scan's generator, continued here for its noise.
    """
    # Exposure window: density window[0] → black, window[1] → white.
    low, high = per_scan(scans, lambda scan: scan["window"][0]), per_scan(scans, lambda scan: scan["window"][1])
    images = np.clip((density - low) / (high - low), 0, 1)
    # Downsample (anti-aliasing) before the cheap per-pixel operations.
    images = block_average(images, image_size, supersample)
    images = display_lut(images, scans, site_cfg)
    x, y = pixel_grid(image_size, 1.0)
    images = (images + per_scan(scans, lambda scan: scan["brightness"])
              + per_scan(scans, lambda scan: scan["gradient"][0]) * x
              + per_scan(scans, lambda scan: scan["gradient"][1]) * y)
    if site_cfg["blur"] > 0:  # detector/screen unsharpness, in pixels at 64 px
        sigma = site_cfg["blur"] * image_size / 64
        images = ndimage.gaussian_filter(images, sigma=(0, sigma, sigma))
    for i, scan in enumerate(scans):
        rng = scan_rngs[i]
        if scan["has_devices"]:
            images[i] = support_devices(images[i], scan, x, y, image_size)
        # Quantum noise: larger where fewer photons reach the detector. Those areas are bright
        # on the film, so the sd grows with the square root of brightness (plus a floor).
        noise_sd = scan["noise"] * np.sqrt(np.clip(images[i], 0.05, 1))
        images[i] += noise_sd * rng.standard_normal((image_size, image_size))
        if scan["collimated"]:
            images[i] = collimate(images[i], scan, site_cfg, x, y, rng)
        images[i] = burn_in_marker(images[i], site_cfg, scan, x, y, image_size)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
