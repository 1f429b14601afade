"""Re-identification audit of a released image set (DESIGN step 7a), by the AUDITOR.

The auditor is the verifier the filter never saw (trained on other patients with another
seed): a filter judged by its own model proves nothing. For a release (one image per
training source, ``source_index`` into the training split) this measures

* **vs source** — the auditor's "same patient" call on (released image, its source image):
  what the privacy filter promised to prevent, checked by an independent model;
* **vs every training patient** — is the released image the same patient as *any* training
  image? Retrieval of the ``k`` nearest training images by auditor embedding, then the
  verifier head on those (``Verifier.retrieve_then_verify``). Also recorded: whether the nearest
  training image belongs to the source's patient (the release points at its own source), and
  whether the image is flagged *and* its nearest verified match is that patient.
  The pairwise threshold (0.5) alone cannot be used here: one image against ~10³ training
  images is 10³ chances for a false alarm, and an image of a patient never seen is
  "re-identified" almost surely. Nor does the head's logit rank matches: it saturates (on the
  default profile the highest-logit training image of a noised *copy* is another patient's for
  30 % of copies), while distance in the same embedding keeps ranking. So the call is: the
  **nearest verified** training image (the nearest of the k whose pairwise probability exceeds
  ``threshold``), flagged if its embedding distance is below a threshold calibrated on held-out
  real patients (``heldout``) — the ``false_alarm`` quantile of their own nearest-verified
  distances. A release of unseen patients scores ≈ ``false_alarm`` by construction, and a rate
  well above it is evidence of re-identification;
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

__all__ = ["FeatureCache", "EmbeddingCache", "pixel_features", "rate", "veto_tradeoff", "nearest_verified", "calibrate_any_threshold", "reid_audit",
           "pixel_nn_distances", "nn_summary"]


class FeatureCache:
    """``fn(images)`` computed once per ImageSet object (keeps the object alive)."""

    def __init__(self, fn):
        self.fn, self._store = fn, {}

    def __call__(self, images: ImageSet) -> torch.Tensor:
        key = id(images)
        if key not in self._store:
            self._store[key] = (images, torch.as_tensor(self.fn(images)).float())
        return self._store[key][1]


class EmbeddingCache(FeatureCache):
    """Auditor embeddings computed once per ImageSet object."""

    def __init__(self, auditor, batch_size: int = 256):
        super().__init__(lambda images: auditor.embed(images, batch_size=int(batch_size)))
        self.auditor = auditor


def pixel_features(images: ImageSet, max_size: int | None = 64) -> torch.Tensor:
    """The whole image as a feature vector (pixels in [-1, 1]), area-downsampled to at most
    ``max_size``² — the space of the pixel-ball attacker and of the NN copy detector."""
    return _flat(images, max_size)


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


def nearest_verified(e_query: torch.Tensor, e_train: torch.Tensor, auditor, k: int = 16,
                     threshold: float = 0.5, retrieval=None) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, index)`` per query of its nearest training image that the auditor verifies
    (pairwise probability > ``threshold``) among the ``k`` nearest by embedding; ``inf`` / -1 if
    none of the k is verified. ``retrieval``: a ``retrieve_then_verify`` result of the same
    queries and keys, if the caller has one already."""
    ret = retrieval or auditor.retrieve_then_verify(e_query, e_train, k=k, threshold=threshold)
    ok = auditor.probability(ret.logits) > threshold             # (N, k), columns nearest first
    first = ok.to(torch.int8).argmax(dim=1)
    index = ret.indices.gather(1, first[:, None])[:, 0]
    dist = (e_query.float().cpu() - e_train.float().cpu()[index]).norm(dim=1).numpy().astype(np.float64)
    has = ok.any(dim=1).numpy()
    return np.where(has, dist, np.inf), np.where(has, index.numpy(), -1)


def calibrate_any_threshold(e_heldout: torch.Tensor, e_train: torch.Tensor, auditor, k: int = 16,
                            false_alarm: float = 0.05, threshold: float = 0.5) -> float:
    """Distance threshold of the "vs any training patient" call, calibrated on held-out patients.

    ``e_heldout``: auditor embeddings of real images of patients NOT in training (their every
    match is a false alarm); ``e_train``: of the training set. Returns the largest distance d
    such that at most ``false_alarm`` of the held-out images have a nearest verified training
    image closer than or at d (``inf`` when fewer than that are verified at all: then every
    verified match counts).
    """
    if not 0 < false_alarm < 1:
        raise ValueError(f"false_alarm is a rate in (0, 1), got {false_alarm}")
    dist, _ = nearest_verified(e_heldout, e_train, auditor, k, threshold)
    allowed = int(np.floor(false_alarm * len(dist)))              # false alarms we may accept
    ordered = np.sort(dist)
    if allowed >= len(ordered) or not np.isfinite(ordered[allowed]):
        return float("inf")
    return float(np.nextafter(ordered[allowed], -np.inf))        # strictly below the (allowed+1)-th


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
            the vs-source call; a vs-all match must pass it too ("verified").
        level: confidence level of the Wilson intervals (default 0.95).
        embed: ``ImageSet -> (N, D)`` embedding function (default: ``auditor.embed``; pass an
            ``EmbeddingCache`` to reuse the training embeddings across releases).
        heldout: real images of patients never trained on, to calibrate the vs-all distance
            threshold to ``false_alarm`` (default 5 %) of them (``calibrate_any_threshold``).
            None: any verified match counts (inflated by ~N comparisons: a rate near 1 means nothing).

    Returns a dict: ``src_*`` (vs source: rate, lo, hi, k, n), ``all_*`` (vs any training
    patient), ``all_threshold`` (its embedding-distance threshold), ``all_false_alarm`` (its
    target rate on held-out patients; NaN if uncalibrated), ``nearest_src_*`` (the nearest
    training image by embedding is the source's patient), ``all_src_*`` (flagged, and the
    nearest verified match is the source's patient), ``src_prob_median``.
    """
    embed = embed or (lambda s: auditor.embed(s))
    e_rel, e_train = embed(release), embed(train)
    out = {"n_released": len(release)}
    any_threshold, any_fa = float("inf"), np.nan
    if heldout is not None:
        any_threshold = calibrate_any_threshold(embed(heldout), e_train, auditor, k, false_alarm, threshold)
        any_fa = float(false_alarm)
    ret = auditor.retrieve_then_verify(e_rel, e_train, k=k, threshold=threshold)
    dist, match = nearest_verified(e_rel, e_train, auditor, k, threshold, retrieval=ret)
    flagged = np.isfinite(dist) & (dist <= any_threshold)
    out.update(rate(flagged, level, "all_"))
    out["all_threshold"], out["all_false_alarm"] = any_threshold, any_fa
    if source_index is None:
        for p in ("src_", "nearest_src_", "all_src_"):
            out.update({f"{p}rate": np.nan, f"{p}lo": np.nan, f"{p}hi": np.nan, f"{p}k": 0, f"{p}n": 0})
        out["src_prob_median"] = np.nan
        return out
    src = _check_source_index(source_index, release, train)
    prob = auditor.probability(auditor.score_pairs(e_rel, e_train[torch.from_numpy(src)])).numpy()
    out.update(rate(prob > threshold, level, "src_"))
    out["src_prob_median"] = float(np.median(prob))
    pids = np.asarray(train.patient_ids).astype(str)
    nearest = ret.indices[:, 0].numpy()
    out.update(rate(pids[nearest] == pids[src], level, "nearest_src_"))
    out.update(rate(flagged & (pids[np.maximum(match, 0)] == pids[src]), level, "all_src_"))
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


def veto_tradeoff(defender_prob, auditor_prob, thresholds, auditor_threshold: float = 0.5,
                  level: float = 0.95) -> list[dict]:
    """What a stricter privacy filter buys, from one candidate per source.

    ``defender_prob`` / ``auditor_prob``: (N,) each verifier's "same patient as my source"
    probability for the same N candidates. For each veto threshold t (the filter drops a
    candidate with defender P >= t): ``pass_rate`` = fraction the defender lets through, and
    ``reid_*`` = the AUDITOR's rate of "same patient" (P > ``auditor_threshold``) among those
    (Wilson interval). Two independent verifiers disagree near the decision boundary, so the
    auditor keeps finding identity in candidates the defender passed at its own 0.5; a lower t
    trades candidates (sampling time) for a smaller residue.
    """
    d, a = np.asarray(defender_prob, dtype=float), np.asarray(auditor_prob, dtype=float)
    if d.shape != a.shape or d.ndim != 1 or len(d) == 0:
        raise ValueError(f"defender_prob and auditor_prob must be equal-length non-empty vectors, got {d.shape}, {a.shape}")
    rows = []
    for t in thresholds:
        if not 0 < t <= 1:
            raise ValueError(f"veto threshold must be in (0, 1], got {t}")
        passed = d < t
        rows.append({"threshold": float(t), "pass_rate": float(passed.mean()), "n_pass": int(passed.sum()),
                     **rate(a[passed] > auditor_threshold, level, "reid_")})
    return rows
