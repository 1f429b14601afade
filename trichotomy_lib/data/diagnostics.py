"""Dataset diagnostics: how labels and scans are spread (identity retrieval: ``evaluation.retrieval``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .imageset import LABELS, ImageSet

__all__ = ["label_prevalence", "scans_per_patient"]


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
