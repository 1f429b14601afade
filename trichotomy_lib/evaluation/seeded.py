"""Mean AUROC over several classifier seeds, with an interval for both sources of spread.

A utility row is a *training recipe* applied to a training set, not one network: two runs of
the same recipe differ by their initialisation, shuffling and augmentation (and, across
machines, by floating-point order). With ``S`` seeds per row the row's estimate is the mean
over seeds of the per-class AUROC, and its interval has two parts:

* test sampling: a percentile bootstrap over test *patients* (``groups``) of the seed-mean,
  the same resamples for every seed and every row (paired);
* training spread: the standard error of the seed-mean, ``sd_s / √S``, times Student's
  ``t_{(1+level)/2, S-1}`` (few seeds: the t quantile keeps the interval honest).

The two are independent, so their half-widths add in quadrature on each side:
``lo = m − √((m − q_lo)² + (t·se)²)``, ``hi = m + √((q_hi − m)² + (t·se)²)``. With one seed
the training term is unknown and left out (``n_seeds`` says so). With two seeds ``t`` is 12.7:
the interval is honest and wide; it is clipped to AUROC's range [0, 1].

The difference to the real row is paired twice: seed ``s`` of a release is compared with
seed ``s`` of the real row on the same resampled patients; its training term is the spread of
the per-seed differences.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t
from sklearn.metrics import roc_auc_score

from .stats import _boot_aurocs, _check_auroc_inputs, _check_level, _evaluable_classes, _percentile_ci

__all__ = ["seeded_auroc", "combine_intervals"]


def combine_intervals(estimate: float, boot_lo: float, boot_hi: float, per_seed, level: float) -> tuple[float, float]:
    """The combined interval of the module docstring from a bootstrap interval and per-seed values."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    if len(per_seed) < 2 or not np.isfinite(boot_lo):
        return boot_lo, boot_hi
    t_se = student_t.ppf((1 + level) / 2, len(per_seed) - 1) * per_seed.std(ddof=1) / np.sqrt(len(per_seed))
    return (float(estimate - np.hypot(estimate - boot_lo, t_se)),
            float(estimate + np.hypot(boot_hi - estimate, t_se)))


def _per_seed(y: np.ndarray, probs: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(S, C) AUROC per seed and class (NaN for classes that are not ``ok``)."""
    out = np.full((len(probs), y.shape[1]), np.nan)
    for s, p in enumerate(probs):
        for c in np.flatnonzero(ok):
            out[s, c] = roc_auc_score(y[:, c], p[:, c])
    return out


def seeded_auroc(y_true, probs, reference=None, class_names=None, groups=None, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict:
    """Per-class and mean AUROC of ``S`` classifier seeds, and the paired difference to a reference row.

    Args:
        y_true: (N, C) 0/1 test labels.
        probs: (S, N, C) predictions of the S seeds of this row (S >= 1).
        reference: (S, N, C) the reference row's predictions with the same seeds (the real
            row for a release), or None (the reference row itself: no difference).
        class_names: C names (default "class_0", …).
        groups: (N,) patient ids of the test images: the bootstrap resamples patients.
        n_boot: bootstrap resamples (>= 1; default 1000). seed: resampling seed.
        level: two-sided level of every interval, in (0, 1) (default 0.95).

    Returns a dict: ``auroc`` / ``lo`` / ``hi`` / ``seed_sd`` ({class or "mean": value}, AUROC
    units), ``boot_lo`` / ``boot_hi`` (the test-sampling part of the interval alone: the power
    of the test population), ``per_seed`` (the S per-seed mean AUROCs), ``n_seeds``, ``n_boot_valid``, ``note``
    ("" or which classes are not estimable — no positives or no negatives in the test set —
    and left out of the mean), and with a reference ``diff`` / ``diff_lo`` / ``diff_hi`` /
    ``diff_per_seed`` (mean AUROC of this row minus the reference's).
    """
    _check_level(level)
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"seeded_auroc: probs must be (seeds, N, C), got shape {probs.shape}")
    if n_boot < 1:
        raise ValueError(f"seeded_auroc: n_boot={n_boot} must be >= 1")
    y, _ = _check_auroc_inputs(y_true, probs[0])
    for p in probs:
        _check_auroc_inputs(y, p)
    if reference is not None:
        reference = np.asarray(reference)
        if reference.shape != probs.shape:
            raise ValueError(f"seeded_auroc: reference must have the shape of probs {probs.shape} "
                             f"(the same seeds on the same images), got {reference.shape}")
    c = y.shape[1]
    names, n_pos, ok = _evaluable_classes(y, class_names, "seeded_auroc: ")
    if not ok.any():
        raise ValueError("seeded_auroc: no class has both positives and negatives in the test set")
    missing = [f"{names[j]} ({'no positives' if n_pos[j] == 0 else 'no negatives'})" for j in np.flatnonzero(~ok)]
    note = f"left out of the mean (not estimable on this test set): {', '.join(missing)}" if missing else ""

    point = _per_seed(y, probs, ok)                                   # (S, C)
    rows = [probs] if reference is None else [probs, reference]
    boots = _boot_aurocs(y[:, ok], [p[:, ok] for r in rows for p in r], n_boot, seed, groups)
    boot = np.stack(boots[:len(probs)])                               # (S, B, C_ok)
    per_seed_mean = point[:, ok].mean(1)
    estimate = {names[j]: float(point[:, j].mean()) if ok[j] else np.nan for j in range(c)}
    estimate["mean"] = float(per_seed_mean.mean())
    out = {"auroc": estimate, "lo": {}, "hi": {}, "boot_lo": {}, "boot_hi": {}, "seed_sd": {},
           "per_seed": per_seed_mean.tolist(),
           "n_seeds": len(probs), "note": note}
    columns = {names[j]: (boot[:, :, k].mean(0), point[:, j]) for k, j in enumerate(np.flatnonzero(ok))}
    columns["mean"] = (boot.mean(2).mean(0), per_seed_mean)
    for name in names + ["mean"]:
        if name not in columns:
            out["lo"][name] = out["hi"][name] = out["seed_sd"][name] = np.nan
            out["boot_lo"][name] = out["boot_hi"][name] = np.nan
            continue
        dist, values = columns[name]
        q_lo, q_hi = _percentile_ci(dist, level)
        out["boot_lo"][name], out["boot_hi"][name] = q_lo, q_hi
        lo, hi = combine_intervals(estimate[name], q_lo, q_hi, values, level)
        out["lo"][name], out["hi"][name] = max(lo, 0.0), min(hi, 1.0)       # AUROC lives in [0, 1]
        out["seed_sd"][name] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
    out["n_boot_valid"] = int(np.isfinite(columns["mean"][0]).sum())
    if reference is not None:
        ref_point = _per_seed(y, reference, ok)[:, ok].mean(1)
        ref_boot = np.stack(boots[len(probs):]).mean(2).mean(0)
        diffs = per_seed_mean - ref_point
        d = float(diffs.mean())
        q_lo, q_hi = _percentile_ci(columns["mean"][0] - ref_boot, level)
        out["diff"] = d
        lo, hi = combine_intervals(d, q_lo, q_hi, diffs, level)
        out["diff_lo"], out["diff_hi"] = max(lo, -1.0), min(hi, 1.0)
        out["diff_per_seed"] = diffs.tolist()
    return out
