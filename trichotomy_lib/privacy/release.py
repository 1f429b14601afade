"""The release container: what a generation stage hands to the audit (DESIGN steps 6–7).

A release directory holds

    images.npy, labels.npy, patient_ids.npy, names.npy   an ``ImageSet`` (``ImageSet.save``)
    source_index.npy                                      int64 (M,): row of the *train* split
                                                          each sample was generated from
    audit.csv                                             every filter decision (absent for
                                                          unfiltered releases)

Every sample carries its **source's** labels and patient id (the paper labels a synthetic
image with the labels of the real image it was conditioned on); its name is
``"<release>/<source name>"`` (``"…#2"`` for a second-best sample of the same source).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageset import ImageSet
from ..io import atomic_path

SOURCE_INDEX_FILE = "source_index.npy"
AUDIT_FILE = "audit.csv"


def make_release(name: str, images: np.ndarray, source_index, train: ImageSet, rank=None) -> ImageSet:
    """An ``ImageSet`` of generated ``images`` (M, H, W) uint8 labelled from ``train[source_index]``.

    ``rank``: optional (M,) 0 = the source's chosen sample, 1 = its second best (named ``#2``).
    """
    images = np.asarray(images)
    source_index = np.asarray(source_index, dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"release {name!r}: images must be (M, H, W) uint8, got {images.dtype} {images.shape}")
    if source_index.shape != (len(images),):
        raise ValueError(f"release {name!r}: source_index must be ({len(images)},), got {source_index.shape}")
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= len(train)):
        raise ValueError(f"release {name!r}: source_index outside the train split [0, {len(train)})")
    rank = np.zeros(len(images), dtype=np.int64) if rank is None else np.asarray(rank, dtype=np.int64)
    names = np.array([f"{name}/{train.names[s]}" + ("" if r == 0 else f"#{r + 1}")
                      for s, r in zip(source_index, rank)], dtype=str)
    if len(set(names.tolist())) != len(names):
        raise ValueError(f"release {name!r}: duplicate (source, rank) pairs — a sample would be released twice")
    return ImageSet(images, train.labels[source_index].astype(np.uint8),
                    np.asarray(train.patient_ids)[source_index].astype(str), names)


def save_release(directory: str | os.PathLike, images: ImageSet, source_index, audit: pd.DataFrame | None = None) -> Path:
    """Write a release directory (each file atomically; a stage's rename makes the whole atomic)."""
    directory = Path(directory)
    source_index = np.asarray(source_index, dtype=np.int64)
    if source_index.shape != (len(images),):
        raise ValueError(f"{directory}: source_index must be ({len(images)},), got {source_index.shape}")
    images.save(directory)
    with atomic_path(directory / SOURCE_INDEX_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, source_index, allow_pickle=False)
    if audit is not None:
        with atomic_path(directory / AUDIT_FILE) as tmp:
            audit.to_csv(tmp, index=False)
    elif (directory / AUDIT_FILE).exists():
        os.unlink(directory / AUDIT_FILE)
    return directory


def load_release_dir(directory: str | os.PathLike) -> tuple[ImageSet, np.ndarray]:
    """``(ImageSet, source_index)`` of a release directory (checks they agree)."""
    directory = Path(directory)
    images = ImageSet.load(directory)
    path = directory / SOURCE_INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; not a release directory")
    source_index = np.load(path, allow_pickle=False)
    if source_index.shape != (len(images),) or source_index.dtype != np.int64:
        raise ValueError(f"{path}: expected int64 ({len(images)},), got {source_index.dtype} {source_index.shape}")
    return images, source_index


def load_audit_dir(directory: str | os.PathLike) -> pd.DataFrame:
    """The release's audit table (``audit.csv``); FileNotFoundError for unfiltered releases."""
    path = Path(directory) / AUDIT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: this release has no audit table (it was not filtered)")
    return read_audit_csv(path)


def read_audit_csv(path: str | os.PathLike) -> pd.DataFrame:
    """An audit CSV with its text columns kept as text ("" stays "") and empty floats as NaN."""
    text = {"patient_id": str, "source_name": str, "decision": str, "reason": str, "source_outcome": str}
    return pd.read_csv(path, dtype=text, keep_default_na=False,
                       na_values={"defender_prob": [""], "copy_ratio": [""], "bce": [""], "guidance": [""]})
