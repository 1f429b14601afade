"""Patient-disjoint train/val/test split, as in the paper (80/10/10, seed 42).

Train and val keep single-label images only; test keeps multi-label images too.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from .filelist import DataError
from .imageset import ImageSet

__all__ = ["split_patients", "SPLIT_NAMES"]

SPLIT_NAMES = ("train", "val", "test")


def split_patients(
    imageset: ImageSet, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 42
) -> dict[str, ImageSet]:
    """Split by patient into ``{"train", "val", "test"}``.

    Args:
        imageset: all images; ``patient_ids`` define the groups (no patient in two splits).
        fractions: (train, val, test) fractions of *patients* (via scikit-learn's
            ``GroupShuffleSplit``), each > 0, summing to 1. Default (0.8, 0.1, 0.1).
        seed: split seed (default 42, the paper's).

    Train and val then drop images with more than one positive label (the paper trains on
    single-label images); test keeps them. An empty split is a ``DataError`` naming it.
    """
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    groups = np.asarray(imageset.patient_ids)
    idx = np.arange(len(imageset))
    n_pat = len(np.unique(groups))
    if n_pat < 3:
        raise DataError(f"need at least 3 patients for a train/val/test split, got {n_pat}")

    # test first, then val out of the rest (fraction re-scaled to the remainder).
    gss = GroupShuffleSplit(n_splits=1, test_size=fr[2], random_state=seed)
    rest, test = next(gss.split(idx, groups=groups))
    gss = GroupShuffleSplit(n_splits=1, test_size=fr[1] / (fr[0] + fr[1]), random_state=seed)
    tr, va = next(gss.split(rest, groups=groups[rest]))
    parts = {"train": rest[tr], "val": rest[va], "test": test}

    single = np.asarray(imageset.labels).sum(1) <= 1
    out = {}
    for name in SPLIT_NAMES:
        keep = parts[name] if name == "test" else parts[name][single[parts[name]]]
        if len(keep) == 0:
            raise DataError(
                f"split '{name}' is empty ({n_pat} patients, fractions {fr}); "
                "use more patients or larger fractions"
            )
        out[name] = imageset.subset(np.sort(keep))
    return out
