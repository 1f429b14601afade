"""Image Retrieval Score (IRS; Dombrowski, Zhang & Kainz, CVPR 2025) and nearest neighbours.

Definitions:

* Every query feature (a synthetic image) retrieves its nearest training feature (L2).
  ``k`` = number of *distinct* training items retrieved by ``n`` queries.
  ``IRS_alpha = k / N_train`` with ``alpha = n / N_train``.
* Occupancy model: a generator that learned ``s`` items and draws ``n`` of them uniformly
  retrieves ``k`` distinct ones with probability

      P(k | s, n) = S2(n, k) * s! / (s - k)! / s**n                                   (1)

  (``S2`` = Stirling number of the second kind).
* ``IRS_inf = argmax_s P(k | s, n) / N_train``.

What is implemented for the estimate and its bounds (``occupancy_estimate``):

* For fixed ``(n, k)`` the factor ``S2(n, k)`` in (1) does not depend on ``s``, so the
  likelihood over ``s`` is ``L(s) ∝ exp(lgamma(s+1) - lgamma(s-k+1) - n log s)``, evaluated
  with log-gamma on *every integer* ``s`` in ``[k, s_max]`` (no Stirling numbers needed;
  works for n up to 10^5 and beyond). ``L`` is unimodal in ``s`` (``s·dlogL/ds`` is
  decreasing), so the argmax is the MLE.
* ``L`` is normalised over ``s`` in ``[k, s_max]`` (i.e. a flat prior on that range) and
  the bounds are the equal-tailed ``alpha_e`` quantiles of that distribution:
  ``s_lo`` = largest ``s`` with ``sum_{s' < s} L(s') <= alpha_e`` and
  ``s_hi`` = smallest ``s`` with ``sum_{s' > s} L(s') <= alpha_e``.
  With ``alpha_e = 0.05`` that is a central 90 % interval.
* ``s_max = s_max_factor * N_train`` (default 100, i.e. IRS_inf up to 100). When ``k`` is
  close to ``n`` (almost every query hits a new item) the likelihood keeps rising with
  ``s``; then the estimate sits at the cap and ``at_cap`` is True — read it as
  "at least this diverse", not as a number.

``log_stirling2`` / ``occupancy_log_pmf`` give the absolute probability (1) for moderate
``n`` (O(n·k) recurrence); they are used to test the model, not by the estimator.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import gammaln, logsumexp

__all__ = [
    "nearest_neighbours",
    "log_stirling2",
    "occupancy_log_pmf",
    "occupancy_log_likelihood",
    "occupancy_estimate",
    "image_retrieval_score",
    "adjusted_irs",
]


# --------------------------------------------------------------------------- neighbours
def nearest_neighbours(queries, keys, k: int = 1, chunk: int = 1024, key_chunk: int = 16384,
                       device: str | torch.device | None = None, dtype=torch.float32):
    """Exact k nearest neighbours in L2 distance, chunked so any size fits in memory.

    Args:
        queries: (Q, D) array/tensor.  keys: (K, D) array/tensor.
        k: neighbours per query, 1 <= k <= K (default 1).
        chunk: queries per block (default 1024); key_chunk: keys per block (default 16384).
            Peak extra memory is a few ``chunk * (key_chunk + k)`` distances (~200 MB at
            the defaults in float32), independent of the number of queries and keys.
        device: torch device (default: CPU). dtype: compute dtype (default float32;
            pass ``torch.float64`` (or ``np.float64``) when exact ties / near-duplicates matter).

    Returns:
        ``(dist, idx)`` numpy arrays of shape (Q, k) (or (Q,) when ``k == 1``): Euclidean
        distances, ascending, and the indices into ``keys``.
    """
    q_all = torch.as_tensor(np.asarray(queries) if not torch.is_tensor(queries) else queries)
    k_all = torch.as_tensor(np.asarray(keys) if not torch.is_tensor(keys) else keys)
    if q_all.ndim != 2 or k_all.ndim != 2 or q_all.shape[1] != k_all.shape[1]:
        raise ValueError(f"queries {tuple(q_all.shape)} and keys {tuple(k_all.shape)} must be "
                         "2-D with the same feature dimension")
    n_keys = k_all.shape[0]
    if q_all.shape[0] == 0:
        raise ValueError("no queries given")
    if not 1 <= k <= n_keys:
        raise ValueError(f"k={k} must be in [1, {n_keys}] (number of keys)")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not isinstance(dtype, torch.dtype):                 # accept numpy dtypes / strings
        dtype = getattr(torch, np.dtype(dtype).name)
    keys_d = k_all.to(device=device, dtype=dtype)
    key_sq = (keys_d * keys_d).sum(1)
    out_d, out_i = [], []
    for q0 in range(0, q_all.shape[0], chunk):
        q = q_all[q0:q0 + chunk].to(device=device, dtype=dtype)
        q_sq = (q * q).sum(1, keepdim=True)
        best_d = torch.full((q.shape[0], 0), float("inf"), device=device, dtype=dtype)
        best_i = torch.zeros((q.shape[0], 0), device=device, dtype=torch.long)
        for k0 in range(0, n_keys, key_chunk):
            kb = keys_d[k0:k0 + key_chunk]
            # ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x  (clamped: rounding can go below 0)
            d2 = (q_sq + key_sq[k0:k0 + key_chunk][None] - 2.0 * q @ kb.T).clamp_min_(0)
            idx = torch.arange(k0, k0 + kb.shape[0], device=device).expand(q.shape[0], -1)
            cand_d = torch.cat([best_d, d2], 1)
            cand_i = torch.cat([best_i, idx], 1)
            kk = min(k, cand_d.shape[1])
            best_d, pos = torch.topk(cand_d, kk, dim=1, largest=False, sorted=True)
            best_i = torch.gather(cand_i, 1, pos)
        out_d.append(best_d.sqrt().cpu())
        out_i.append(best_i.cpu())
    dist = torch.cat(out_d).double().numpy()
    idx = torch.cat(out_i).numpy()
    return (dist[:, 0], idx[:, 0]) if k == 1 else (dist, idx)


# --------------------------------------------------------------------------- occupancy model
def log_stirling2(n: int, k_max: int | None = None) -> np.ndarray:
    """log S2(n, j) for j = 0..k_max (default n), by the recurrence
    S2(m, j) = j·S2(m-1, j) + S2(m-1, j-1) in log space. O(n·k_max); fine for n ≲ 10^4.
    Entries that are zero (j > n, or j = 0 < n) are -inf."""
    k_max = n if k_max is None else min(int(k_max), n)
    row = np.full(k_max + 1, -np.inf)
    row[0] = 0.0                                           # S2(0, 0) = 1
    log_j = np.log(np.arange(1, k_max + 1, dtype=float))
    for m in range(1, n + 1):
        new = np.full_like(row, -np.inf)
        new[1:] = np.logaddexp(log_j + row[1:], row[:-1])  # j S2(m-1,j) + S2(m-1,j-1)
        row = new
    return row


def occupancy_log_likelihood(k: int, n: int, s) -> np.ndarray:
    """log of ``s!/(s-k)!/s^n`` — equation (1) without the s-independent S2(n, k).
    ``-inf`` where ``s < k``."""
    s = np.asarray(s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = gammaln(s + 1) - gammaln(np.maximum(s - k, 0) + 1) - n * np.log(s)
    return np.where(s >= k, out, -np.inf)


def occupancy_log_pmf(k, s: int, n: int) -> np.ndarray:
    """Absolute log P(k | s, n) of equation (1) (exact Stirling numbers; moderate n only)."""
    k = np.asarray(k)
    log_s2 = log_stirling2(n)
    ks = np.clip(k, 0, n)
    out = log_s2[ks] + occupancy_log_likelihood(k, n, np.full(k.shape, s))
    return np.where((k >= 0) & (k <= min(n, s)), out, -np.inf)


_WINDOW_NATS = 60.0   # likelihood below max - 60 nats is treated as 0 (see occupancy_estimate)


def occupancy_estimate(k: int, n: int, s_max: int, alpha_e: float = 0.05) -> dict:
    """MLE of the number of learned items ``s`` from ``k`` distinct hits in ``n`` draws,
    with equal-tailed bounds of the likelihood normalised over ``s in [k, s_max]``
    (see module docstring). Returns dict(s_hat, s_lo, s_hi, at_cap)."""
    k, n, s_max = int(k), int(n), int(s_max)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if s_max < k:
        raise ValueError(f"s_max={s_max} must be >= k={k}")
    if not 0 < alpha_e < 0.5:
        raise ValueError(f"alpha_e={alpha_e} must be in (0, 0.5)")
    # L is unimodal in s, so the region within `_WINDOW_NATS` of the maximum is one
    # interval; locate it on a coarse geometric grid, then evaluate every integer in it.
    # Mass outside is < exp(-_WINDOW_NATS) * s_max (negligible), which keeps s_max ~ 10^7 cheap.
    coarse = np.unique(np.round(np.geomspace(k, s_max, 4000)))
    ll_c = occupancy_log_likelihood(k, n, coarse)
    j = int(np.argmax(ll_c))
    low = np.nonzero(ll_c[:j] < ll_c[j] - _WINDOW_NATS)[0]
    high = np.nonzero(ll_c[j:] < ll_c[j] - _WINDOW_NATS)[0]
    s_from = coarse[low[-1]] if low.size else k
    s_to = coarse[j + high[0]] if high.size else s_max
    s = np.arange(s_from, s_to + 1, dtype=float)
    ll = occupancy_log_likelihood(k, n, s)
    # k = n: L(s) = prod_j (1 - j/s) never stops rising, the MLE is the cap
    i_hat = len(s) - 1 if k == n else int(np.argmax(ll))
    ll -= logsumexp(ll)                                    # flat prior on [k, s_max]
    cdf = np.cumsum(np.exp(ll, out=ll), out=ll)            # in place: s_max may be ~10^7
    # mass strictly below s_i is cdf[i-1]: s_lo = largest s_i with cdf[i-1] <= alpha_e;
    # mass strictly above s_i is 1 - cdf[i]: s_hi = smallest s_i with cdf[i] >= 1 - alpha_e
    i_lo = int(np.searchsorted(cdf, alpha_e, side="right"))
    i_hi = int(np.searchsorted(cdf, 1.0 - alpha_e, side="left"))
    return dict(s_hat=int(s[i_hat]), s_lo=int(s[i_lo]), s_hi=int(s[i_hi]),
                at_cap=bool(s[i_hat] == s_max))


# --------------------------------------------------------------------------- IRS
def image_retrieval_score(query_feats, train_feats, alpha_e: float = 0.05,
                          s_max_factor: float = 100.0, **nn_kwargs) -> dict:
    """IRS of ``query_feats`` (n, D) against ``train_feats`` (N_train, D).

    Returns dict(k, n, n_train, alpha, irs_alpha, irs_inf, irs_inf_lo, irs_inf_hi, at_cap):
    ``irs_alpha = k / N_train``; ``irs_inf`` = MLE of s / N_train with its
    ``alpha_e`` bounds (``s`` searched in ``[k, s_max_factor * N_train]``).
    ``nn_kwargs`` go to :func:`nearest_neighbours` (chunk, device, dtype)."""
    _, idx = nearest_neighbours(query_feats, train_feats, k=1, **nn_kwargs)
    n_train, n = len(train_feats), len(idx)
    k = int(np.unique(idx).size)
    est = occupancy_estimate(k, n, max(int(s_max_factor * n_train), k), alpha_e)
    return dict(k=k, n=n, n_train=n_train, alpha=n / n_train, irs_alpha=k / n_train,
                irs_inf=est["s_hat"] / n_train, irs_inf_lo=est["s_lo"] / n_train,
                irs_inf_hi=est["s_hi"] / n_train, at_cap=est["at_cap"])


def adjusted_irs(synth_queries, real_test_queries, train_feats, alpha_e: float = 0.05,
                 **kwargs) -> dict:
    """Adjusted IRS = IRS_inf(synthetic queries) / IRS_inf(real test queries).

    The real test images are the best a perfect generator could do in this feature space,
    so the ratio corrects for the space's own measurement gap (≈ 1: as diverse as real
    data). Bounds are the conservative ratio of bounds: [lo_syn / hi_real, hi_syn / lo_real].
    Returns dict(adjusted, adjusted_lo, adjusted_hi, synthetic=<IRS dict>, real=<IRS dict>).
    """
    syn = image_retrieval_score(synth_queries, train_feats, alpha_e, **kwargs)
    real = image_retrieval_score(real_test_queries, train_feats, alpha_e, **kwargs)
    return dict(adjusted=syn["irs_inf"] / real["irs_inf"],
                adjusted_lo=syn["irs_inf_lo"] / real["irs_inf_hi"],
                adjusted_hi=syn["irs_inf_hi"] / real["irs_inf_lo"],
                synthetic=syn, real=real)
