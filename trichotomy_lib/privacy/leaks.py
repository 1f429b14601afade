"""Graded leaks of training data, and negative controls: what a privacy metric must tell apart.

A singling-out metric that fires only on exact copies certifies nothing about a generator that
leaks less. Every release here has one image per training image (or patient) and the source
index of the training image it leaks:

* ``noise`` σ (0.05 … 0.4, image units of [-1, 1]): the training image plus Gaussian noise;
* ``blur`` σ (pixels): the training image, Gaussian-blurred;
* ``shift`` p (pixels): translated by ±p pixels and rotated by ±2.5·p degrees;
* ``new scan`` (PhantomCXR): a new scan of the training patient — same person, new acquisition;
* ``acquisition`` (PhantomCXR): the training scan's acquisition and findings on the anatomy of
  a patient in no split — everything but the person.

Leak strength falls along each ladder, so every attacker's risk should fall with it. Negative
controls must stay at baseline:

* ``held-out patients``: real images of patients never trained on (the test split);
* ``held-out, random sources``: the same images, each assigned a random training image as its
  "source" (the attack is scored as if it had leaked that one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import seeds
from ..data.imageset import ImageSet
from ..data.phantom.variants import acquisition_swap, new_scans, patient_index
from .controls import noised_copies

__all__ = ["LEAK_LADDERS", "Leak", "noised", "blurred", "shifted", "new_scan_release", "acquisition_release",
           "random_sources", "graded_leaks"]

# Strength ladders, strongest leak first (the parameter grows as the leak weakens).
LEAK_LADDERS = {"noise": (0.05, 0.1, 0.2, 0.4), "blur": (0.5, 1.0, 2.0), "shift": (1, 2, 4)}
# Patient indices of the acquisition swap's anatomies start here: far beyond any dataset's patients.
_FRESH_ANATOMY_OFFSET = 10_000_000


@dataclass
class Leak:
    """One control release: ``family`` (``noise`` …, ``negative``), ``parameter`` of its ladder
    (NaN for single leaks), the images and each one's source index into the training split."""

    name: str
    family: str
    parameter: float
    release: ImageSet
    source_index: np.ndarray | None


def _like(train: ImageSet, images: np.ndarray, tag: str, index=None) -> ImageSet:
    index = np.arange(len(train)) if index is None else np.asarray(index)
    return ImageSet(images, np.asarray(train.labels)[index].copy(), np.asarray(train.patient_ids)[index].copy(),
                    np.char.add(f"{tag}:", np.asarray(train.names)[index].astype(str)))


def _to_float(images) -> np.ndarray:
    return np.asarray(images, dtype=np.float32) / 127.5 - 1.0


def _to_uint8(x) -> np.ndarray:
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def noised(train: ImageSet, sigma: float, seed: int) -> tuple[ImageSet, np.ndarray]:
    """Every training image + N(0, σ²) noise (σ in [0, 2], image units); one stream per image."""
    return noised_copies(train, sigma, seed, ("leak", "noise"), f"noise{sigma:g}")


def blurred(train: ImageSet, sigma_px: float) -> tuple[ImageSet, np.ndarray]:
    """Every training image, Gaussian-blurred with σ = ``sigma_px`` pixels (> 0)."""
    if not sigma_px > 0:
        raise ValueError(f"blur σ must be > 0 pixels, got {sigma_px}")
    x = np.stack([ndimage.gaussian_filter(im, sigma_px, mode="nearest") for im in _to_float(train.images)])
    return _like(train, _to_uint8(x), f"blur{sigma_px:g}"), np.arange(len(train))


def shifted(train: ImageSet, pixels: float, seed: int) -> tuple[ImageSet, np.ndarray]:
    """Every training image translated by ±``pixels`` in x and y and rotated by ±2.5·``pixels``
    degrees about its centre (signs drawn per image), edges extended."""
    if not pixels > 0:
        raise ValueError(f"shift must be > 0 pixels, got {pixels}")
    x = _to_float(train.images)
    out = np.empty_like(x)
    size = x.shape[-1]
    centre = (size - 1) / 2
    for i, im in enumerate(x):
        sx, sy, sr = seeds.rng(seed, "leak", "shift", i).choice([-1.0, 1.0], size=3)
        angle = np.deg2rad(2.5 * pixels * sr)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        offset = np.array([centre, centre]) - rot @ np.array([centre + sy * pixels, centre + sx * pixels])
        out[i] = ndimage.affine_transform(im, rot, offset=offset, order=1, mode="nearest")
    return _like(train, _to_uint8(out), f"shift{pixels:g}"), np.arange(len(train))


def _phantom_kwargs(data_cfg: dict, seed: int) -> dict:
    if data_cfg.get("source", "phantom") != "phantom":
        raise ValueError("new-scan and acquisition leaks render PhantomCXR patients; the data is a file list")
    return {"seed": data_cfg["seed"] if data_cfg.get("seed") is not None else seed, "site": data_cfg["site"],
            "image_size": data_cfg["image_size"], "max_scans": data_cfg["max_scans"],
            "params": data_cfg.get("phantom") or None}


def new_scan_release(train: ImageSet, data_cfg: dict, seed: int) -> tuple[ImageSet, np.ndarray]:
    """One new scan of every training patient, sourced to the patient's first training image."""
    pid = np.asarray(train.patient_ids).astype(str)
    _, first = np.unique(pid, return_index=True)
    first = np.sort(first)
    images = new_scans([patient_index(p) for p in pid[first]], **_phantom_kwargs(data_cfg, seed))
    return _like(train, images, "newscan", first), first.astype(np.int64)


def acquisition_release(train: ImageSet, data_cfg: dict, seed: int) -> tuple[ImageSet, np.ndarray]:
    """Every training scan's acquisition and findings on the anatomy of a patient in no split."""
    scan_of = []
    for name in np.asarray(train.names).astype(str):
        patient, scan = name.rsplit("/", 1)
        scan_of.append((patient_index(patient), int(scan.lstrip("s").split(".")[0])))
    anatomy = _FRESH_ANATOMY_OFFSET + np.arange(len(train))
    images = acquisition_swap(scan_of, anatomy, **_phantom_kwargs(data_cfg, seed))
    return _like(train, images, "acquisition"), np.arange(len(train))


def random_sources(heldout: ImageSet, n_train: int, seed: int) -> np.ndarray:
    """A random training image index for each held-out image (a negative control with sources)."""
    return seeds.rng(seed, "leak", "random_sources").integers(0, n_train, size=len(heldout)).astype(np.int64)


def graded_leaks(train: ImageSet, heldout: ImageSet, data_cfg: dict, seed: int) -> list[Leak]:
    """Every ladder step, the two PhantomCXR leaks (when the data is PhantomCXR) and the two
    negative controls, in that order."""
    leaks = []
    for sigma in LEAK_LADDERS["noise"]:
        leaks.append(Leak(f"noise σ={sigma:g}", "noise", sigma, *noised(train, sigma, seed)))
    for sigma in LEAK_LADDERS["blur"]:
        leaks.append(Leak(f"blur σ={sigma:g} px", "blur", sigma, *blurred(train, sigma)))
    for px in LEAK_LADDERS["shift"]:
        leaks.append(Leak(f"shift {px:g} px + rotate {2.5 * px:g}°", "shift", px, *shifted(train, px, seed)))
    if data_cfg.get("source", "phantom") == "phantom":
        leaks.append(Leak("new scan of the patient", "new scan", np.nan, *new_scan_release(train, data_cfg, seed)))
        leaks.append(Leak("its acquisition, another anatomy", "acquisition", np.nan,
                          *acquisition_release(train, data_cfg, seed)))
    leaks.append(Leak("held-out patients", "negative", np.nan, heldout, None))
    leaks.append(Leak("held-out, random sources", "negative", np.nan, heldout, random_sources(heldout, len(train), seed)))
    return leaks
