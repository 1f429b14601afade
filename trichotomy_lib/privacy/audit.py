"""Re-identification audit of a released image set (DESIGN step 7a), by the AUDITOR.

The auditor is the verifier the filter never saw (trained on other patients with another
seed): a filter judged by its own model proves nothing. For a release (one image per
training source, ``source_index`` into the training split) this measures

* **vs source** — the auditor's "same patient" call on (released image, its source image):
  what the privacy filter promised to prevent, checked by an independent model;
* **vs every training patient** — is the released image the same patient as *any* training
  image? Retrieval of the ``k`` nearest training images by auditor embedding, then the
  verifier head on those (``Verifier.retrieve_then_verify``). Also recorded: whether the best
  match belongs to the source's patient (the release points at its own source), and whether
  it is flagged *and* that patient.
  The pairwise threshold (0.5) cannot be used here: one image against ~10³ training images
  is 10³ chances for a false alarm, and at the auditor's pairwise false-positive rate of a
  few per cent an image of a patient never seen is "re-identified" almost surely. The
  1-vs-N threshold is therefore calibrated on held-out real patients (``heldout``): the
  (1 − ``false_alarm``) quantile of their best logit against the training set, never below
  the pairwise threshold. A release of unseen patients then scores ≈ ``false_alarm`` by
  construction, and a rate above it is evidence of re-identification;
* **nearest-neighbour distance** — a copy detector beside the verifier: pixel-space L2 of
  each released image to its nearest training image, compared with the same distance for
  held-out real images. Released images much closer to a training image than real unseen
  images ever are is the signature of memorisation.

Rates come with Wilson 95 % intervals (``evaluation.stats.wilson_interval``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.imageset import ImageSet
from ..evaluation.irs import nearest_neighbours
from ..evaluation.stats import wilson_interval

__all__ = ["EmbeddingCache", "rate", "calibrate_any_threshold", "reid_audit", "pixel_nn_distances", "nn_summary"]


class EmbeddingCache:
    """Auditor embeddings computed once per ImageSet object (keeps the object alive)."""

    def __init__(self, auditor, batch_size: int = 256):
        self.auditor, self.batch_size, self._store = auditor, int(batch_size), {}

    def __call__(self, images: ImageSet) -> torch.Tensor:
        key = id(images)
        if key not in self._store:
            self._store[key] = (images, self.auditor.embed(images, batch_size=self.batch_size))
        return self._store[key][1]


def rate(flags, level: float = 0.95, prefix: str = "") -> dict:
    """``{prefix+"rate", "lo", "hi", "k", "n"}`` of a boolean array (Wilson interval)."""
    flags = np.asarray(flags, dtype=bool)
    k, n = int(flags.sum()), int(flags.size)
    r, lo, hi = wilson_interval(k, n, level) if n else (np.nan, np.nan, np.nan)
    return {f"{prefix}rate": r, f"{prefix}lo": lo, f"{prefix}hi": hi, f"{prefix}k": k, f"{prefix}n": n}


def _check_source_index(source_index, release: ImageSet, train: ImageSet) -> np.ndarray:
    source_index = np.asarray(source_index)
    if source_index.shape != (len(release),):
        raise ValueError(f"source_index must have one entry per released image ({len(release)}), "
                         f"got shape {source_index.shape}")
    if not np.issubdtype(source_index.dtype, np.integer):
        raise ValueError(f"source_index must be integer indices into the training split, got {source_index.dtype}")
    if len(source_index) and (source_index.min() < 0 or source_index.max() >= len(train)):
        raise ValueError(f"source_index has entries outside [0, {len(train)}) (the training split's size)")
    return source_index.astype(np.int64)


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def calibrate_any_threshold(e_heldout: torch.Tensor, e_train: torch.Tensor, auditor, k: int = 16,
                            false_alarm: float = 0.05, floor: float = 0.5) -> float:
    """Logit threshold of the "vs any training patient" call, calibrated on held-out patients.

    ``e_heldout``: auditor embeddings of real images of patients NOT in training (their every
    match is a false alarm); ``e_train``: of the training set. The threshold is the
    (1 − ``false_alarm``) quantile of each held-out image's best logit over its ``k`` retrieved
    training images, and at least ``logit(floor)`` (the pairwise decision threshold).
    """
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm is a rate in (0, 1), got {false_alarm}")
    best = auditor.retrieve_then_verify(e_heldout, e_train, k=k, threshold=floor).max_logit.numpy()
    return max(float(np.quantile(best, 1 - false_alarm, method="higher")), _logit(floor))


def reid_audit(release: ImageSet, source_index, train: ImageSet, auditor, k: int = 16,
               threshold: float = 0.5, level: float = 0.95, embed=None, heldout: ImageSet | None = None,
               false_alarm: float = 0.05) -> dict:
    """Re-identification rates of a release by the auditor.

    Args:
        release: the released images. source_index: (N,) index of each one's source in
            ``train``, or None (no source, e.g. the negative control: vs-source fields NaN).
        train: the training split. auditor: a trained ``Verifier`` (role "auditor").
        k: training images retrieved per released image before verification (default 16, >= 1).
        threshold: pairwise "same patient" probability threshold (default 0.5, the paper's):
            the vs-source call, and the floor of the vs-all threshold.
        level: confidence level of the Wilson intervals (default 0.95).
        embed: ``ImageSet -> (N, D)`` embedding function (default: ``auditor.embed``; pass an
            ``EmbeddingCache`` to reuse the training embeddings across releases).
        heldout: real images of patients never trained on, to calibrate the vs-all threshold
            to ``false_alarm`` (default 5 %) of them (``calibrate_any_threshold``). None: the
            pairwise threshold (inflated by ~N comparisons: a rate near 1 means nothing).

    Returns a dict: ``src_*`` (vs source: rate, lo, hi, k, n), ``all_*`` (vs any training
    patient), ``all_threshold`` (its probability threshold), ``all_false_alarm`` (its target
    rate on held-out patients; NaN if uncalibrated), ``top_src_*`` (the best-scoring of the k is
    the source's patient), ``nearest_src_*`` (the nearest by embedding is), ``all_src_*``
    (flagged and the best match is the source's patient), ``src_prob_median``.
    """
    embed = embed or (lambda s: auditor.embed(s))
    e_rel, e_train = embed(release), embed(train)
    out = {"n_released": len(release)}
    any_logit, any_fa = _logit(threshold), np.nan
    if heldout is not None:
        any_logit = calibrate_any_threshold(embed(heldout), e_train, auditor, k, false_alarm, threshold)
        any_fa = float(false_alarm)
    ret = auditor.retrieve_then_verify(e_rel, e_train, k=k, threshold=threshold)
    flagged = ret.max_logit > any_logit
    out.update(rate(flagged.numpy(), level, "all_"))
    out["all_threshold"], out["all_false_alarm"] = float(1 / (1 + np.exp(-any_logit))), any_fa
    out["all_threshold_logit"] = any_logit
    if source_index is None:
        for p in ("src_", "top_src_", "nearest_src_", "all_src_"):
            out.update({f"{p}rate": np.nan, f"{p}lo": np.nan, f"{p}hi": np.nan, f"{p}k": 0, f"{p}n": 0})
        out["src_prob_median"] = np.nan
        return out
    src = _check_source_index(source_index, release, train)
    prob = auditor.probability(auditor.score_pairs(e_rel, e_train[torch.from_numpy(src)])).numpy()
    out.update(rate(prob > threshold, level, "src_"))
    out["src_prob_median"] = float(np.median(prob))
    pids = np.asarray(train.patient_ids).astype(str)
    top_is_src = pids[ret.best.numpy()] == pids[src]
    out.update(rate(top_is_src, level, "top_src_"))
    out.update(rate(pids[ret.indices[:, 0].numpy()] == pids[src], level, "nearest_src_"))
    out.update(rate(top_is_src & flagged.numpy(), level, "all_src_"))
    return out


def _flat(images: ImageSet, max_size: int | None) -> torch.Tensor:
    x = images.tensor()
    if max_size is not None and x.shape[-1] > max_size:
        x = torch.nn.functional.interpolate(x, size=(max_size, max_size), mode="area")
    return x.flatten(1)


def pixel_nn_distances(queries: ImageSet, train: ImageSet, max_size: int | None = 64) -> np.ndarray:
    """L2 distance (pixels in [-1, 1], whole image) of each query to its nearest training image.

    Images larger than ``max_size`` (default 64; None: never) are area-downsampled to
    ``max_size``² first, so paper-scale sets (512², ~70k training images) fit in memory.
    float32 arithmetic: distances are exact to ~1e-2 (an identical image reads ≈ 0).
    """
    if queries.images.shape[1:] != train.images.shape[1:]:
        raise ValueError(f"query images {queries.images.shape[1:]} and training images "
                         f"{train.images.shape[1:]} differ in size")
    dist, _ = nearest_neighbours(_flat(queries, max_size), _flat(train, max_size), k=1)
    return np.asarray(dist, dtype=np.float64).reshape(-1)


def nn_summary(dist: np.ndarray, reference: np.ndarray | None, quantile: float = 0.05,
               level: float = 0.95) -> dict:
    """Median NN distance, and the fraction of released images closer to a training image
    than the ``quantile`` (default 5 %) of held-out real images are (``nn_close_*`` with a
    Wilson interval; ≈ ``quantile`` for a release that behaves like unseen real data, → 1
    for copies). ``nn_ratio`` = median release / median reference."""
    out = {"nn_median": float(np.median(dist))}
    if reference is None or len(reference) == 0:
        out.update({"nn_ref_median": np.nan, "nn_ratio": np.nan, "nn_close_rate": np.nan,
                    "nn_close_lo": np.nan, "nn_close_hi": np.nan, "nn_close_threshold": np.nan})
        return out
    thr = float(np.quantile(reference, quantile))
    out.update({"nn_ref_median": float(np.median(reference)),
                "nn_ratio": float(np.median(dist) / np.median(reference)), "nn_close_threshold": thr})
    out.update({k: v for k, v in rate(dist < thr, level, "nn_close_").items() if not k.endswith(("_k", "_n"))})
    return out
