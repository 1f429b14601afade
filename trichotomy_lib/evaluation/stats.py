"""Statistics shared by every table: Wilson intervals, AUROC with bootstrap CIs,
Fréchet distance, singling-out risk. The Image Retrieval Score lives in ``irs.py``
(re-exported here).

Conventions: ``level`` is the two-sided confidence level in (0, 1) (default 0.95);
bootstrap CIs are percentile intervals over ``n_boot`` resamples drawn with a
``numpy.random.default_rng(seed)``; AUROC values are in [0, 1] (× 100 for "points").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg
from scipy.stats import binomtest, bootstrap, norm
from sklearn.metrics import roc_auc_score

from .irs import adjusted_irs, image_retrieval_score, nearest_neighbours  # noqa: F401

__all__ = [
    "wilson_interval", "auroc_table", "mean_auroc", "auroc_difference_ci", "bootstrap_ci",
    "frechet_distance", "frechet_distance_from_stats", "singling_out_risk", "paired_singling_out_risk",
    "cohen_nissim_isolation_probability",
    "nearest_neighbours", "image_retrieval_score", "adjusted_irs",
]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")


# --------------------------------------------------------------------------- Wilson
def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Rate ``k/n`` with its Wilson score interval: ``(rate, lo, hi)``. Needs 0 <= k <= n, n >= 1."""
    _check_level(level)
    if int(n) != n or int(k) != k:
        raise ValueError(f"k={k} and n={n} must be integers")
    if n <= 0:
        raise ValueError(f"Wilson interval needs n >= 1 trials, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return k / n, float(ci.low), float(ci.high)


# --------------------------------------------------------------------------- AUROC
def _check_auroc_inputs(y_true, y_score):
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=float)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must both be (N, C)")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must contain only 0/1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score contains NaN or inf")
    return y_true.astype(bool), y_score


def _evaluable_classes(y_true: np.ndarray, class_names, who: str = "") -> tuple[list, np.ndarray, np.ndarray]:
    """(names, positives per class, mask of the classes with both label values) of (N, C) labels."""
    n, c = y_true.shape
    names = [f"class_{i}" for i in range(c)] if class_names is None else list(class_names)
    if len(names) != c:
        raise ValueError(f"{who}{len(names)} class names for {c} columns")
    n_pos = y_true.sum(0)
    return names, n_pos, (n_pos > 0) & (n_pos < n)


def _iter_boot_counts(n: int, n_boot: int, seed: int, chunk: int = 250, groups=None):
    """Yield (b, n) float32 multiplicities of each image in successive blocks of resamples
    (exact: counts <= n < 2**24). The caller uses one stream for all classes and all
    scores, i.e. one shared set of resampled indices: a paired bootstrap.

    groups: optional (n,) cluster labels (e.g. patient ids). Then whole clusters are resampled
    (a cluster bootstrap): the scans of one patient are correlated, and resampling them one
    by one would treat them as independent evidence and make the interval too narrow.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inverse, m = None, n
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must have one label per image ({n},), got shape {groups.shape}")
        _, inverse = np.unique(groups, return_inverse=True)
        m = int(inverse.max()) + 1
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        idx = rng.integers(0, m, size=(b, m))
        idx += m * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * m).reshape(b, m).astype(np.float32)
        yield counts if inverse is None else counts[:, inverse]


class _AurocPlan:
    """Per-class precomputation for the weighted Mann-Whitney AUROC on resamples.

    AUROC = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (W_pos W_neg)
    (ties count ½, as sklearn). With the negatives sorted by score and C(t) the cumulative
    negative weight of the first t of them, a positive i sees C(left_i) negatives strictly
    below and C(right_i) - C(left_i) tied (left/right = searchsorted sides), so
    numerator = sum_i w_i · ½ (C(left_i) + C(right_i)).
    """

    def __init__(self, pos: np.ndarray, score: np.ndarray):
        neg_idx = np.nonzero(~pos)[0]
        self.neg_order = neg_idx[np.argsort(score[neg_idx], kind="stable")]
        neg_sorted = score[self.neg_order]
        self.pos_idx = np.nonzero(pos)[0]
        self.left = np.searchsorted(neg_sorted, score[self.pos_idx], side="left")
        self.right = np.searchsorted(neg_sorted, score[self.pos_idx], side="right")

    def __call__(self, w: np.ndarray) -> np.ndarray:
        """AUROC for each row of multiplicities w (b, N); NaN where W_pos or W_neg is 0."""
        wn = w[:, self.neg_order]
        cum = np.zeros((w.shape[0], wn.shape[1] + 1), dtype=np.float32)
        np.cumsum(wn, axis=1, out=cum[:, 1:])
        wp = w[:, self.pos_idx]
        seen = cum[:, self.left] + cum[:, self.right]         # 2 × (below + ½ tied)
        num = 0.5 * np.einsum("bi,bi->b", wp.astype(np.float64), seen.astype(np.float64))
        den = wp.sum(1, dtype=np.float64) * cum[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)


def _boot_aurocs(y_true, scores, n_boot: int, seed: int, groups=None) -> list[np.ndarray]:
    """For each (N, C) score array in ``scores``: (n_boot, C) per-class AUROC on the same
    resamples (of images, or of ``groups`` when given); NaN where a class has a single label
    value in a resample."""
    plans = [[_AurocPlan(y_true[:, c], sc[:, c]) for c in range(y_true.shape[1])]
             for sc in scores]
    out = [np.empty((n_boot, y_true.shape[1])) for _ in scores]
    b0 = 0
    for w in _iter_boot_counts(len(y_true), n_boot, seed, groups=groups):
        for o, plan in zip(out, plans):
            for c, p in enumerate(plan):
                o[b0:b0 + len(w), c] = p(w)
        b0 += len(w)
    return out


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.nan, np.nan
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def auroc_table(y_true, y_score, class_names=None, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95, groups=None) -> pd.DataFrame:
    """Per-class AUROC (sklearn ``roc_auc_score``) and their mean, with paired bootstrap CIs.

    Args:
        y_true: (N, C) 0/1 labels. y_score: (N, C) scores (any monotone scale).
        class_names: C names (default "class_0", ...). n_boot: resamples of the N images
            (default 1000; 0 = no CI). seed: resampling seed. level: CI level.
        groups: optional (N,) patient ids: resample patients instead of images.

    Returns a DataFrame indexed by class name plus "mean", columns
    ``auroc, lo, hi, n_pos, n_neg, n_boot_valid, note``. The "mean" row is the mean of the
    per-class AUROCs (the paper's metric) over the classes with both label values; its CI
    uses the same resamples (paired), keeping those where every such class is defined;
    its n_pos/n_neg are label counts summed over those classes. A class with no positives
    (or no negatives) gets NaN and a ``note``; resamples where a class has a single label
    value are skipped for that class (``n_boot_valid`` counts the rest).
    """
    _check_level(level)
    if n_boot < 0:
        raise ValueError(f"n_boot={n_boot} must be >= 0")
    y_true, y_score = _check_auroc_inputs(y_true, y_score)
    n, c = y_true.shape
    names, n_pos, ok = _evaluable_classes(y_true, class_names)
    auroc = np.full(c, np.nan)
    for j in np.nonzero(ok)[0]:
        auroc[j] = roc_auc_score(y_true[:, j], y_score[:, j])
    boots = _boot_aurocs(y_true, [y_score], n_boot, seed, groups)[0]
    rows = []
    for j in range(c):
        lo, hi = _percentile_ci(boots[:, j], level) if ok[j] else (np.nan, np.nan)
        note = "" if ok[j] else ("no positives" if n_pos[j] == 0 else "no negatives")
        rows.append(dict(auroc=auroc[j], lo=lo, hi=hi, n_pos=int(n_pos[j]),
                         n_neg=int(n - n_pos[j]),
                         n_boot_valid=int(np.isfinite(boots[:, j]).sum()), note=note))
    if ok.any():
        mean_boot = boots[:, ok].mean(1)           # NaN if any evaluable class is undefined
        lo, hi = _percentile_ci(mean_boot, level)
        rows.append(dict(auroc=auroc[ok].mean(), lo=lo, hi=hi, n_pos=int(n_pos[ok].sum()),
                         n_neg=int((n - n_pos[ok]).sum()),
                         n_boot_valid=int(np.isfinite(mean_boot).sum()),
                         note="" if ok.all() else f"mean over {ok.sum()} of {c} classes"))
    else:
        rows.append(dict(auroc=np.nan, lo=np.nan, hi=np.nan, n_pos=0, n_neg=0,
                         n_boot_valid=0, note="no class has both label values"))
    return pd.DataFrame(rows, index=pd.Index(names + ["mean"], name="class"))


def mean_auroc(y_true, y_score) -> float:
    """The paper's metric alone, in [0, 1]: the mean per-class AUROC over the classes that have
    both label values (``auroc_table``'s "mean" row, without an interval)."""
    return float(auroc_table(y_true, y_score, n_boot=0).loc["mean", "auroc"])


def auroc_difference_ci(y_true, score_a, score_b, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95, groups=None) -> dict:
    """Mean-AUROC difference ``A - B`` on the same test images, paired bootstrap CI.

    Typical use: A = classifier trained on synthetic data, B = trained on real data,
    both scored on the real test split → "difference to real". Returns dict(auroc_a,
    auroc_b, diff, lo, hi, n_boot_valid) in AUROC units (× 100 for points). Means are over
    the classes with both label values in ``y_true``.
    """
    _check_level(level)
    y_true, score_a = _check_auroc_inputs(y_true, score_a)
    _, score_b = _check_auroc_inputs(y_true, score_b)
    n_pos = y_true.sum(0)
    ok = (n_pos > 0) & (n_pos < len(y_true))
    if not ok.any():
        raise ValueError("no class has both label values in y_true")
    yt = y_true[:, ok]
    mean_a = np.mean([roc_auc_score(yt[:, j], score_a[:, ok][:, j]) for j in range(yt.shape[1])])
    mean_b = np.mean([roc_auc_score(yt[:, j], score_b[:, ok][:, j]) for j in range(yt.shape[1])])
    boot_a, boot_b = _boot_aurocs(yt, [score_a[:, ok], score_b[:, ok]], n_boot, seed, groups)
    d = boot_a.mean(1) - boot_b.mean(1)            # same resamples for A and B: paired
    lo, hi = _percentile_ci(d, level)
    return dict(auroc_a=float(mean_a), auroc_b=float(mean_b), diff=float(mean_a - mean_b),
                lo=lo, hi=hi, n_boot_valid=int(np.isfinite(d).sum()))


def bootstrap_ci(statistic, *arrays, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 method: str = "percentile", vectorized: bool = False
                 ) -> tuple[float, float, float]:
    """``(statistic(*arrays), lo, hi)`` with a paired ``scipy.stats.bootstrap`` CI.

    ``statistic(*arrays) -> float`` is called on resampled copies (rows resampled jointly
    along axis 0). ``method``: "percentile" (default, as ``auroc_table``), "basic" or "BCa".
    ``vectorized=True`` if ``statistic`` accepts an ``axis`` keyword (much faster).
    """
    _check_level(level)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = [np.asarray(a) for a in arrays]
    res = bootstrap(arrays, statistic, n_resamples=n_boot, paired=True, vectorized=vectorized,
                    confidence_level=level, method=method, rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return float(statistic(*arrays)), float(ci.low), float(ci.high)


# --------------------------------------------------------------------------- Fréchet
def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps: float = 1e-6,
                                imag_tol: float = 1e-3) -> float:
    """FD = ||mu_a - mu_b||² + Tr(Σa + Σb - 2 (Σa Σb)^{1/2})  (Fréchet / FID formula).

    ``(Σa Σb)^{1/2}`` by ``scipy.linalg.sqrtm``; if that is not finite (singular
    product), ``eps·I`` is added to both covariances and it is retried. Imaginary parts
    from rounding are dropped; a relative imaginary part of the trace term above
    ``imag_tol`` raises (the covariances are then not valid PSD matrices).
    """
    mu_a, mu_b = np.atleast_1d(mu_a).astype(float), np.atleast_1d(mu_b).astype(float)
    sigma_a, sigma_b = np.atleast_2d(sigma_a).astype(float), np.atleast_2d(sigma_b).astype(float)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape or \
            sigma_a.shape != (mu_a.size, mu_a.size):
        raise ValueError("means must be (D,) and covariances (D, D), for both sets")
    covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if not np.isfinite(covmean).all():
        off = eps * np.eye(mu_a.size)
        covmean = linalg.sqrtm((sigma_a + off) @ (sigma_b + off))
    tr_covmean = np.trace(covmean)
    if np.iscomplexobj(covmean):
        scale = max(abs(tr_covmean.real), np.trace(sigma_a) + np.trace(sigma_b), 1e-12)
        if abs(tr_covmean.imag) > imag_tol * scale:
            raise ValueError(f"sqrtm(Σa Σb) has a large imaginary trace part {tr_covmean.imag:.3g}")
        tr_covmean = tr_covmean.real
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * tr_covmean)


def frechet_distance(feats_a, feats_b, **kwargs) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features
    (sample mean and unbiased covariance; N, M >= 2). See ``frechet_distance_from_stats``."""
    a, b = np.asarray(feats_a, dtype=float), np.asarray(feats_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"features {a.shape}, {b.shape} must be (N>=2, D) with the same D")
    return frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False),
                                       b.mean(0), np.cov(b, rowvar=False), **kwargs)


# --------------------------------------------------------------------------- singling out
def singling_out_risk(attack_successes: int, n_attacks: int, control_successes: int,
                      n_controls: int, level: float = 0.95) -> dict:
    """Singling-out risk as in Anonymeter (Giomi et al., PETS 2023).

    attack / control rates = successes / trials with Wilson intervals;
    risk = (a - c) / (1 - c), clipped to [0, 1]. Its CI: risk ± z·σ_R with
    σ_a, σ_c = Wilson half-width / z and first-order error propagation for independent
    a, c:  σ_R² = σ_a² / (1-c)² + σ_c² (1-a)² / (1-c)⁴   (∂R/∂a = 1/(1-c),
    ∂R/∂c = -(1-a)/(1-c)²), bounds clipped to [0, 1]; ``risk_unclipped`` is (a - c) / (1 - c)
    before clipping (negative when the control isolates more often). ``warning`` is set (else None)
    when control >= attack (no evidence of risk) or control = 1 (risk undefined → NaN).
    """
    z = norm.ppf(0.5 + level / 2)
    a, a_lo, a_hi = wilson_interval(attack_successes, n_attacks, level)
    c, c_lo, c_hi = wilson_interval(control_successes, n_controls, level)
    sa, sc = (a_hi - a_lo) / (2 * z), (c_hi - c_lo) / (2 * z)
    warning = None
    if c >= 1.0:
        risk = risk_lo = risk_hi = unclipped = np.nan
        warning = "control rate is 1: every predicate isolates by chance; risk undefined"
    else:
        r = unclipped = (a - c) / (1 - c)
        sr = np.sqrt(sa ** 2 / (1 - c) ** 2 + sc ** 2 * (1 - a) ** 2 / (1 - c) ** 4)
        risk, risk_lo, risk_hi = (float(np.clip(x, 0, 1)) for x in (r, r - z * sr, r + z * sr))
        if c >= a:
            warning = ("control rate >= attack rate: the attack does no better than chance "
                       "(risk reported as 0)")
    return dict(attack_rate=a, attack_ci=(a_lo, a_hi), control_rate=c, control_ci=(c_lo, c_hi),
                risk=risk, risk_lo=risk_lo, risk_hi=risk_hi, risk_unclipped=float(unclipped), warning=warning)


def paired_singling_out_risk(attack_hits, control_hits, groups=None, level: float = 0.95, n_boot: int = 4000,
                             seed: int = 0, control_draws: int = 1) -> dict:
    """Singling-out risk of predicates played on both populations, with a cluster-bootstrap CI.

    Predicate i isolates a training patient (``attack_hits[i]``) and, played again on the
    control population, a control patient (``control_hits[i]``). The point estimates are those
    of ``singling_out_risk`` (a = mean attack hit, c = mean control hit, R = (a − c)/(1 − c)).
    The intervals are percentile intervals over ``n_boot`` resamples of the predicates in which

    * attack and control move together (paired): each resample keeps a predicate's two
      outcomes side by side. Predicates differ in how easily they isolate (one in a dense region
      of the image distribution rarely does in either population, one in a sparse region more
      often in both), so a and c are correlated, which intervals for two independent rates
      (``singling_out_risk``) ignore;
    * whole ``groups`` are resampled at once (a cluster bootstrap; e.g. the source patient of
      each predicate): the released images of one patient are dependent, and counting them as
      independent evidence would make every interval too narrow.

    The populations are held fixed: the intervals are conditional on the drawn training and
    control patients. Where the resampled statistic does not vary (no predicate isolates anyone
    in either population, or every one does), the interval of ``singling_out_risk`` for
    independent predicates is returned instead (Wilson rates, delta method): a bootstrap cannot
    see sampling error that the sample never shows.

    With several control populations (``control_draws`` = K, each as large as the training
    population), ``control_hits[i]`` is predicate i's isolation rate over them, a multiple of
    1/K: the control rate is then estimated from K·P trials, and its sampling error shrinks with K.

    Args:
        attack_hits: (P,) booleans, P >= 1. control_hits: (P,) booleans, or rates in [0, 1] over
            ``control_draws`` control populations.
        groups: (P,) cluster labels, or None (every predicate its own cluster).
        level: two-sided level in (0, 1). n_boot: resamples, >= 100. seed: the resampling stream.
        control_draws: K >= 1, the control populations each predicate was played on (default 1).

    Returns the keys of ``singling_out_risk`` plus ``interval`` ("paired cluster bootstrap" or
    "independent (degenerate bootstrap)") and ``n_groups``.
    """
    _check_level(level)
    att, ctl = np.asarray(attack_hits), np.asarray(control_hits)
    if att.ndim != 1 or att.shape != ctl.shape or len(att) == 0:
        raise ValueError(f"attack_hits {att.shape} and control_hits {ctl.shape} must be the same non-empty (P,)")
    if not (isinstance(control_draws, (int, np.integer)) and not isinstance(control_draws, bool) and control_draws >= 1):
        raise ValueError(f"control_draws must be an integer >= 1, got {control_draws!r}")
    if control_draws > 1 and ctl.dtype == bool:
        raise ValueError(f"control_hits are booleans but control_draws={control_draws}: pass each predicate's "
                         "isolation rate over the control populations")
    if not np.isin(att, (0, 1)).all():
        raise ValueError("attack_hits must be booleans (0/1)")
    ctl_counts = np.asarray(ctl, dtype=np.float64) * control_draws
    if not (np.all((ctl_counts >= -1e-9) & (ctl_counts <= control_draws + 1e-9))
            and np.allclose(ctl_counts, np.round(ctl_counts), atol=1e-6)):
        raise ValueError(f"control_hits must be booleans (0/1) or rates over control_draws={control_draws} "
                         "populations (multiples of 1/control_draws in [0, 1])")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 100):
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    att, ctl = att.astype(np.float32), ctl.astype(np.float32)
    p = len(att)
    base = singling_out_risk(int(att.sum()), p, int(np.round(ctl_counts.sum())), p * control_draws, level)
    n_groups = p if groups is None else len(np.unique(np.asarray(groups)))
    a_star, c_star = [], []
    for counts in _iter_boot_counts(p, n_boot, seed, groups=groups):
        total = counts.sum(1)
        a_star.append(counts @ att / total)
        c_star.append(counts @ ctl / total)
    a_star, c_star = np.concatenate(a_star).astype(float), np.concatenate(c_star).astype(float)
    if np.ptp(att) == 0 and np.ptp(ctl) == 0:
        # Every predicate alike: the intervals of independent rates, the control's over P trials
        # (a predicate's K control outcomes are not independent of each other).
        wide = singling_out_risk(int(att.sum()), p, int(np.round(ctl.sum())), p, level)
        return {**base, **{k: wide[k] for k in ("attack_ci", "control_ci", "risk_lo", "risk_hi")},
                "interval": "independent (degenerate bootstrap)", "n_groups": n_groups}
    q = (0.5 - level / 2, 0.5 + level / 2)
    out = dict(base, interval="paired cluster bootstrap", n_groups=n_groups)
    out["attack_ci"] = tuple(float(x) for x in np.quantile(a_star, q))
    out["control_ci"] = tuple(float(x) for x in np.quantile(c_star, q))
    if np.isfinite(base["risk"]):
        with np.errstate(divide="ignore", invalid="ignore"):
            r_star = np.where(c_star < 1, (a_star - c_star) / (1 - c_star), np.nan)
        r_star = r_star[np.isfinite(r_star)]
        lo, hi = np.quantile(r_star, q)
        out["risk_lo"], out["risk_hi"] = float(np.clip(lo, 0, 1)), float(np.clip(hi, 0, 1))
    return out


def cohen_nissim_isolation_probability(n, w):
    """Probability that a predicate of weight ``w`` in [0, 1] isolates exactly one of
    ``n`` >= 1 i.i.d. rows: n·w·(1-w)^(n-1), computed as exp(log n + log w + (n-1) log1p(-w))
    (stable for large n). Broadcasts over array inputs."""
    n, w = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(w, dtype=float))
    if (n < 1).any() or ((w < 0) | (w > 1)).any() or np.isnan(w).any():
        raise ValueError("need n >= 1 and 0 <= w <= 1")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_w = np.log(w)
        logp = np.log(n) + log_w + (n - 1) * np.log1p(-w)
    p = np.exp(np.where(n == 1, log_w, logp))       # n = 1: p = w (also covers w = 1)
    p = np.where((w == 1) & (n > 1), 0.0, p)
    return p if p.ndim else float(p)
