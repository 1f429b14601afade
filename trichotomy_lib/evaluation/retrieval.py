"""Identity retrieval: is an image's nearest other image the same patient? (precision@1)

Used for every feature space the project compares — raw pixels, the verifiers' embeddings,
the pseudo-conditioning encoder — so the numbers are comparable: for each image whose patient
has at least two images, find its nearest *other* image (L2) and count a hit when it shows the
same patient. Chance is the mean, over queries, of (own patient's other images) / (N − 1).
"""

from __future__ import annotations

import numpy as np
import torch

from .stats import wilson_interval

__all__ = ["precision_at_1"]


def precision_at_1(features, patient_ids, level: float = 0.95, chunk: int = 1024) -> dict:
    """Retrieval precision@1 with a Wilson interval.

    Args:
        features: (N, D) array or tensor (any feature space; flattened images for pixels).
        patient_ids: (N,) patient of each row.
        level: confidence level of the interval, in (0, 1).
        chunk: queries per distance block (memory only; does not change the result).

    Returns ``{"value", "lo", "hi", "k", "n", "chance"}`` (k hits of n queries).
    """
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).double()
    x = x.reshape(len(x), -1)
    x = x - x.mean(0)  # centred float64: |a|² − 2ab + |b|² does not cancel badly
    pid = np.asarray(patient_ids).astype(str)
    if len(x) != len(pid):
        raise ValueError(f"{len(x)} feature rows for {len(pid)} patient ids")
    if not torch.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    _, inverse, counts = np.unique(pid, return_inverse=True, return_counts=True)
    queries = np.nonzero(counts[inverse] >= 2)[0]
    if len(queries) == 0:
        raise ValueError("precision@1 needs a patient with two or more images; none has")
    sq = (x * x).sum(1)
    nearest = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        q = torch.as_tensor(queries[start:start + chunk])
        d = sq[q, None] - 2.0 * x[q] @ x.T + sq[None, :]
        d[torch.arange(len(q)), q] = float("inf")  # never the query itself
        nearest[start:start + len(q)] = d.argmin(1).numpy()
    k = int(np.sum(pid[nearest] == pid[queries]))
    value, lo, hi = wilson_interval(k, len(queries), level)
    chance = float(((counts[inverse][queries] - 1) / max(len(pid) - 1, 1)).mean())
    return {"value": value, "lo": lo, "hi": hi, "k": k, "n": int(len(queries)), "chance": chance}
