"""Populations and releases the privacy evaluation compares against (DESIGN step 7c).

A singling-out attack means nothing without a baseline, and a privacy metric means nothing
unless it can fail. This module provides both:

* ``control_population`` — a fresh PhantomCXR population never seen in training, drawn from
  the same distribution as the training split (same site, image size, scan distribution,
  phantom parameters, single-label images only as in train) from a *different seed stream*,
  with patient ids prefixed (``"ctrl:a-p00012"``) so they never collide with training ids.
  The singling-out control rate is measured on it (Anonymeter's "control" set, Giomi et al.
  2023). The same function with another ``stream``/``prefix`` draws the held-out "weight"
  population on which predicate thresholds are calibrated and predicate weights estimated.
* ``filelist_populations`` — for real file-list data nothing can be generated: the
  val + test patients are split patient-disjointly into control / weight / negative-control
  parts (smaller than the training population; the attack then plays on an equally sized
  subsample of training patients, see ``pso.evaluate_pso``).
* ``positive_control_release`` — every training image plus light Gaussian noise (σ in
  [-1, 1] image units): a release that copies its sources. Must score a high risk.
* ``negative_control_release`` — held-out real images of other patients. Must score a risk
  whose confidence interval includes 0.
"""

from __future__ import annotations

import numpy as np

from ..data.build import validate_data_cfg
from ..data.imageset import ImageSet
from ..data.phantom import generate_phantom
from .. import seeds

__all__ = ["control_population", "filelist_populations", "noised_copies", "positive_control_release",
           "negative_control_release", "prefix_ids", "single_label"]

# Fraction of the val + test patients going to (control, weight, negative, auditor) for file-list data.
FILELIST_FRACTIONS = (0.4, 0.2, 0.2, 0.2)
FILELIST_PARTS = ("control", "weight", "negative", "auditor")


def prefix_ids(images: ImageSet, prefix: str) -> ImageSet:
    """The same images with ``"<prefix>:"`` in front of every patient id and name."""
    if not prefix or ":" in prefix:
        raise ValueError(f"prefix must be a non-empty string without ':', got {prefix!r}")
    return ImageSet(images.images, images.labels,
                    np.char.add(f"{prefix}:", np.asarray(images.patient_ids).astype(str)),
                    np.char.add(f"{prefix}:", np.asarray(images.names).astype(str)))


def single_label(images: ImageSet) -> ImageSet:
    """Images with at most one positive label — the filter ``data.splits`` applies to train."""
    return images.subset(np.asarray(images.labels).sum(1) <= 1)


def control_population(data_cfg: dict | None, n_patients: int, seed: int, stream: str = "control",
                       prefix: str = "ctrl", train_like: bool = True, progress: bool = False) -> ImageSet:
    """A fresh PhantomCXR population of exactly ``n_patients`` patients.

    Args:
        data_cfg: the profile's ``data`` section (validated with ``validate_data_cfg``); must
            be ``source: phantom`` (file-list data: use ``filelist_populations``).
        n_patients: patients wanted (>= 1); normally the number of training patients.
        seed: the profile's seed. The phantom seed is ``seeds.derive(base, "privacy", stream)``
            with ``base`` = ``data.seed`` if set, else ``seed`` — a different stream from the
            training data's (which uses ``base`` itself), so no patient is shared.
        stream: name of the seed stream (default "control"; e.g. "weight" for the
            calibration population). Different streams give independent populations.
        prefix: prepended to patient ids and names as ``"<prefix>:"`` (default "ctrl").
        train_like: keep single-label images only, as the training split does (default True);
            patients left without an image are replaced by further fresh patients, so the
            result always has ``n_patients`` patients.
    """
    cfg = validate_data_cfg(data_cfg)
    if cfg["source"] != "phantom":
        raise ValueError(f"control_population generates PhantomCXR patients, but data.source is "
                         f"{cfg['source']!r}; for file-list data use filelist_populations(val, test, seed)")
    if not (isinstance(n_patients, (int, np.integer)) and n_patients >= 1):
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    base = cfg["seed"] if cfg["seed"] is not None else seed
    phantom_seed = seeds.derive(base, "privacy", stream)
    parts, have, first = [], 0, 0
    while have < n_patients:
        want = n_patients - have
        batch = generate_phantom(want if not train_like else int(np.ceil(want * 1.1)) + 2,
                                 image_size=cfg["image_size"], seed=phantom_seed, site=cfg["site"],
                                 max_scans=cfg["max_scans"], first_patient=first,
                                 params=cfg["phantom"] or None, progress=progress)
        first += batch.n_patients
        if train_like:
            batch = single_label(batch)
        keep_pids = list(dict.fromkeys(batch.patient_ids.tolist()))[:want]   # generation order
        batch = batch.subset(np.isin(batch.patient_ids, keep_pids))
        parts.append(batch)
        have += len(keep_pids)
    out = ImageSet.concat(parts)
    return prefix_ids(out, prefix)


def filelist_populations(val: ImageSet, test: ImageSet, seed: int,
                         fractions: tuple[float, ...] = FILELIST_FRACTIONS) -> dict[str, ImageSet]:
    """Held-out populations for file-list data: the val + test patients, split by patient.

    Returns ``{"control", "weight", "negative", "auditor"}`` (patient-disjoint, fractions of
    the patients given by ``fractions``, default 0.4 / 0.2 / 0.2 / 0.2, seeded by
    ``seeds.derive(seed, "privacy", "filelist")``). Only single-label images are kept in
    "control" and "weight" (train-like); "negative" keeps everything (it is a release);
    "auditor" is what the third-party auditor verifier trains on — patients the attack never
    plays on, the stand-in for a public re-identification set the data holder does not have.
    Much smaller than the training population: ``pso.evaluate_pso`` then plays the attack on
    an equally sized subsample of training patients.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (len(FILELIST_PARTS),) or (fr <= 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f"fractions must be {len(FILELIST_PARTS)} positive numbers summing to 1, got {fractions}")
    both = ImageSet(*(np.concatenate([np.asarray(getattr(val, f)), np.asarray(getattr(test, f))])
                      for f in ("images", "labels", "patient_ids", "names")))
    patients = np.unique(both.patient_ids.astype(str))
    need = 2 * len(FILELIST_PARTS)
    if len(patients) < need:
        raise ValueError(f"val + test hold {len(patients)} patient(s); need at least {need} for the control, "
                         "weight, negative-control and auditor populations")
    perm = seeds.rng(seed, "privacy", "filelist").permutation(patients)
    cuts = np.round(np.cumsum(fr)[:-1] * len(perm)).astype(int)
    cuts = np.clip(cuts, 2 * np.arange(1, len(cuts) + 1), len(perm) - 2 * np.arange(len(cuts), 0, -1))
    groups = np.split(perm, cuts)
    out = {}
    for name, group in zip(FILELIST_PARTS, groups):
        part = both.subset(np.isin(both.patient_ids.astype(str), group))
        out[name] = part if name in ("negative", "auditor") else single_label(part)
    return out


def noised_copies(train: ImageSet, sigma: float, seed: int, stream: tuple, tag: str) -> tuple[ImageSet, np.ndarray]:
    """Every training image plus N(0, σ²) pixel noise: a release that copies its sources.

    σ is in the [-1, 1] units of ``ImageSet.tensor`` (0.05 ≈ 6 grey levels), in [0, 2]. The
    noise of image ``i`` comes from the seed stream ``(*stream, i)``, so the release does not
    depend on how it is batched. Names get ``"<tag>:"`` in front; labels and patient ids are the
    source's (as generated releases keep them). Returns ``(release, source_index = arange(N))``.
    """
    if not 0 <= sigma <= 2:
        raise ValueError(f"noise σ must be in [0, 2] (image units of [-1, 1]), got {sigma}")
    x = train.images.astype(np.float32) / 127.5 - 1.0
    for i in range(len(x)):
        x[i] += seeds.rng(seed, *stream, i).normal(0.0, sigma, size=x[i].shape).astype(np.float32)
    images = np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    release = ImageSet(images, np.asarray(train.labels).copy(), np.asarray(train.patient_ids).copy(),
                       np.char.add(f"{tag}:", np.asarray(train.names).astype(str)))
    return release, np.arange(len(train))


def positive_control_release(train: ImageSet, sigma: float, seed: int) -> tuple[ImageSet, np.ndarray]:
    """The positive control: every training image with light noise σ (``privacy.positive_sigma``)."""
    if not 0 <= sigma <= 2:
        raise ValueError(f"privacy.positive_sigma must be in [0, 2] (image units of [-1, 1]), got {sigma}")
    return noised_copies(train, sigma, seed, ("positive_control",), "pos")


def negative_control_release(heldout: ImageSet) -> tuple[ImageSet, None]:
    """Held-out real images of patients never trained on, released as they are.

    There is no source image (``source_index`` None): the vs-source re-identification rate
    is undefined, everything else is computed as for any release.
    """
    if len(heldout) == 0:
        raise ValueError("negative control: the held-out set is empty")
    return heldout, None
