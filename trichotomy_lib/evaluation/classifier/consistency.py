"""Label consistency (DESIGN step 6): how alike the classifier's predictions on two images are.

The filter scores a candidate by the mean over the 8 classes of the binary cross-entropy
between the reference classifier's predictions on its source image (as target) and on the
candidate (as prediction). This module works on prediction arrays only — numpy and pandas,
no network code — so the privacy filter can import it without the training machinery.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...data.imageset import N_LABELS

# Label-consistency reference values measured with the paper's code (Dombrowski & Kainz 2025).
PAPER_CONSISTENCY = {"sample vs its source": 0.106, "same patient": 0.166, "different patients": 0.213}


def _as_probs(p, name: str) -> np.ndarray:
    if hasattr(p, "detach"):  # a torch tensor (duck-typed: this module does not import torch)
        p = p.detach().float().cpu().numpy()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != N_LABELS:
        raise ValueError(f"{name} must have {N_LABELS} class probabilities in its last axis, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (sigmoid outputs, not logits)")
    return p


def label_consistency(p_source, p_candidate, eps: float = 1e-7) -> np.ndarray:
    """The filter's label-consistency score: mean over the 8 classes of the BCE between the
    classifier's predictions on the source (as target) and on the candidate (as prediction):

        BCE(s, c) = -(1/8) Σ_k [ s_k log c_k + (1 - s_k) log(1 - c_k) ]

    Lower = more consistent. It is not 0 for identical predictions: BCE(p, p) is the mean
    binary entropy of p (0 only for confident 0/1 predictions). Paper reference values:
    ``PAPER_CONSISTENCY``. Arrays (…, 8) broadcast against each other (numpy rules), e.g.
    (N, 8) with (N, 8) → (N,), or (8,) with (M, 8) → (M,). ``c`` is clipped to
    [eps, 1 - eps] (default 1e-7) so a confident wrong prediction costs ~16, not infinity.
    """
    s, c = _as_probs(p_source, "p_source"), _as_probs(p_candidate, "p_candidate")
    c = np.clip(c, eps, 1 - eps)
    return -(s * np.log(c) + (1 - s) * np.log1p(-c)).mean(axis=-1)


def consistency_matrix(p_sources, p_candidates, eps: float = 1e-7) -> np.ndarray:
    """(N, M) ``label_consistency`` of every source (N, 8) with every candidate (M, 8),
    as two matrix products (no (N, M, 8) intermediate)."""
    s, c = _as_probs(p_sources, "p_sources"), _as_probs(p_candidates, "p_candidates")
    if s.ndim != 2 or c.ndim != 2:
        raise ValueError(f"consistency_matrix needs (N, 8) and (M, 8), got {s.shape} and {c.shape}")
    c = np.clip(c, eps, 1 - eps)
    return -(s @ np.log(c).T + (1 - s) @ np.log1p(-c).T) / N_LABELS


def pair_consistency(probs, patient_ids, n_pairs: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Label consistency of image pairs of the same patient and of different patients.

    probs: (N, 8) classifier outputs; patient_ids: (N,). Same-patient pairs: every ordered
    pair (i, j), i != j, of images of one patient (a random ``n_pairs`` of them if there are
    more). Different-patient pairs: as many random ordered pairs of images of two different
    patients (``n_pairs`` if given). Returns one row per pair: ``source``, ``candidate``
    (row indices), ``same_patient``, ``bce``. The paper's reference: same 0.166, different 0.213.
    """
    p = _as_probs(probs, "probs")
    pids = np.asarray(patient_ids)
    if p.ndim != 2 or pids.shape != (len(p),):
        raise ValueError(f"pair_consistency: probs (N, 8) and patient_ids (N,) needed, got {p.shape} and {pids.shape}")
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(pids, return_inverse=True)
    i, j = np.nonzero(inverse[:, None] == inverse[None, :])
    same = np.stack([i, j], 1)[i != j]
    if n_pairs is not None and len(same) > n_pairs:
        same = same[np.sort(rng.choice(len(same), n_pairs, replace=False))]
    n_diff = n_pairs if n_pairs is not None else max(len(same), 1)
    if len(np.unique(inverse)) < 2:
        raise ValueError("pair_consistency: needs images of at least two patients")
    diff = np.empty((0, 2), dtype=np.int64)
    while len(diff) < n_diff:
        cand = rng.integers(0, len(p), size=(2 * n_diff, 2))
        diff = np.concatenate([diff, cand[inverse[cand[:, 0]] != inverse[cand[:, 1]]]])
    pairs = np.concatenate([same, diff[:n_diff]])
    return pd.DataFrame({
        "source": pairs[:, 0], "candidate": pairs[:, 1],
        "same_patient": np.r_[np.ones(len(same), bool), np.zeros(n_diff, bool)],
        "bce": label_consistency(p[pairs[:, 0]], p[pairs[:, 1]]),
    })


def summarize_pair_consistency(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and count of ``pair_consistency`` rows per kind, beside the paper's value."""
    kind = np.where(pairs["same_patient"], "same patient", "different patients")
    out = pairs.groupby(kind)["bce"].agg(["mean", "median", "count"]).rename(columns={"count": "n_pairs"})
    out = out.reindex(["same patient", "different patients"])
    out["paper"] = [PAPER_CONSISTENCY[k] for k in out.index]
    out.index.name = "pair"
    return out
