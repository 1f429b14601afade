"""What an embedding space carries: patient identity (retrieval) and findings (linear probe).

Both numbers matter for DiADM. Conditioning on an embedding gives the diffusion model the
findings (utility) — but whatever identity the embedding carries is handed to the generator
too, which is why pseudo-conditioned samples need the per-sample privacy filter (DESIGN 6).

* Identity precision@1 (Packhäuser et al. 2022 report 0.996 for a trained re-id network):
  ``evaluation.retrieval.precision_at_1``, the same measure for every feature space.
* Linear-probe AUROC: one logistic regression per finding on standardised embeddings of
  the training split, evaluated on the test split (mean of per-class AUROC, the paper's metric).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.imageset import LABELS, ImageSet
from ..evaluation.irs import nearest_neighbours


def _as_2d(features, what: str = "features") -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, D), got shape {x.shape}")
    return x


def pixel_features(images: ImageSet, pool: int = 1) -> np.ndarray:
    """Raw pixels as features: (N, (H/pool)·(W/pool)) float32 in [-1, 1] (the 'no encoder' baseline).

    ``pool`` (>= 1, default 1) average-pools pool×pool blocks first (a 16×16 thumbnail of a
    32 px image keeps a linear probe on pixels fast).
    """
    import torch.nn.functional as F

    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool}")
    x = images.tensor()
    return (F.avg_pool2d(x, pool) if pool > 1 else x).flatten(1).numpy()


def nearest_others(features, k: int = 1, queries=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest *other* rows (L2) of each query row: ``(dist, idx)``, each (Q, k).

    ``queries``: row indices (default all). A row is never its own neighbour, even when it
    has exact duplicates.
    """
    x = _as_2d(features)
    queries = np.arange(len(x)) if queries is None else np.asarray(queries, dtype=int)
    if not 1 <= k <= len(x) - 1:
        raise ValueError(f"k={k} must be in [1, {len(x) - 1}] (rows minus the query itself)")
    dist, idx = nearest_neighbours(x[queries], x, k=k + 1)
    dist, idx = dist.reshape(len(queries), k + 1), idx.reshape(len(queries), k + 1)
    keep = idx != queries[:, None]
    keep[keep.all(1), -1] = False  # self not among the k+1 (ties): drop the farthest instead
    return dist[keep].reshape(-1, k), idx[keep].reshape(-1, k)


def linear_probe(train_x, train_y, test_x, test_y, C: float = 1.0, seed: int = 0,
                 class_names=LABELS, n_boot: int = 0) -> pd.DataFrame:
    """Per-finding logistic regression on standardised features; AUROC on the test rows.

    Args:
        train_x, test_x: (N, D) features. train_y, test_y: (N, C) 0/1 labels.
        C: inverse L2 strength of sklearn's ``LogisticRegression`` (default 1.0).
        n_boot: bootstrap resamples for CIs (0: none), see ``evaluation.stats.auroc_table``.

    Returns ``auroc_table``'s DataFrame (rows: classes + "mean"). A class with no positive
    (or no negative) training row cannot be fitted and gets a constant score (AUROC 0.5).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ..evaluation.stats import auroc_table

    train_x, test_x = _as_2d(train_x, "train_x"), _as_2d(test_x, "test_x")
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_y.shape[0] != len(train_x) or test_y.shape[0] != len(test_x) or train_y.shape[1] != test_y.shape[1]:
        raise ValueError(f"labels {train_y.shape}/{test_y.shape} do not match features {train_x.shape}/{test_x.shape}")
    scaler = StandardScaler().fit(train_x)
    a, b = scaler.transform(train_x), scaler.transform(test_x)
    scores = np.zeros(test_y.shape, dtype=np.float64)
    for j in range(train_y.shape[1]):
        if 0 < train_y[:, j].sum() < len(train_y):
            model = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(a, train_y[:, j])
            scores[:, j] = model.decision_function(b)
    return auroc_table(test_y, scores, class_names=list(class_names), n_boot=n_boot, seed=seed)


def project_2d(features, method: str = "pca", seed: int = 0) -> np.ndarray:
    """A 2-D map of the rows for plotting: ``"pca"`` (linear, global) or ``"tsne"`` (local)."""
    x = _as_2d(features)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
