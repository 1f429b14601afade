"""Dataset diagnostics: is identity hidden from raw pixels, how are labels and scans spread."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .imageset import LABELS, ImageSet

__all__ = ["pixel_nn_precision_at_1", "label_prevalence", "scans_per_patient"]


def pixel_nn_precision_at_1(imageset: ImageSet, chunk: int = 512) -> float:
    """Retrieval precision@1 of raw-pixel nearest neighbours for patient identity.

    For every image whose patient has >= 2 images, find its nearest *other* image by L2
    distance on raw pixels (float, 0..255) and count it a hit when that image shows the same
    patient. Returns hits / queries (NaN when no patient has two images). A dataset where this
    is high leaks identity to anyone with a pixel ruler; PhantomCXR keeps it low, so a
    re-identification verifier has to learn anatomy rather than match pixels.
    """
    # float64 and centred: the expansion |a|^2 - 2ab + |b|^2 cancels badly in float32.
    x = imageset.images.reshape(len(imageset), -1).astype(np.float64)
    x -= x.mean(0)
    pids = np.asarray(imageset.patient_ids)
    _, inverse, counts = np.unique(pids, return_inverse=True, return_counts=True)
    queries = np.where(counts[inverse] >= 2)[0]
    if len(queries) == 0:
        return float("nan")
    sq = (x * x).sum(1)
    hits = 0
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d = sq[q, None] - 2.0 * x[q] @ x.T + sq[None, :]
        d[np.arange(len(q)), q] = np.inf  # never match an image with itself
        nn = d.argmin(1)
        hits += int((pids[nn] == pids[q]).sum())
    return hits / len(queries)


def scans_per_patient(imageset: ImageSet) -> np.ndarray:
    """Number of images of every patient (one entry per patient, in sorted patient-id order)."""
    _, counts = np.unique(np.asarray(imageset.patient_ids), return_counts=True)
    return counts


def label_prevalence(splits: dict[str, ImageSet]) -> pd.DataFrame:
    """Per split (rows) and label (columns): positive counts and fractions.

    Columns form a two-level index (``"count"`` / ``"fraction"``, label); extra columns
    ``("count", "images")`` and ``("count", "patients")`` give the split sizes.
    """
    rows = {}
    for name, ds in splits.items():
        counts = np.asarray(ds.labels, dtype=np.int64).sum(0)
        n = len(ds)
        row = {("count", label): int(c) for label, c in zip(LABELS, counts)}
        row.update({("fraction", label): (c / n if n else float("nan")) for label, c in zip(LABELS, counts)})
        row[("count", "images")] = n
        row[("count", "patients")] = ds.n_patients
        rows[name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df
