"""Downstream utility (DESIGN step 8): train on a release, test on real patients.

The paper's main table: the reference classifier (same architecture, same budget) is trained on
each training set — the real training split and every synthetic release, each sample labelled
with its *source* image's labels — its epoch is selected on the *real* validation split, and it
is tested on the *real* test split. Each row is trained with ``utility.seeds`` classifier seeds.
Per row: per-class AUROC and their mean (over seeds) with intervals that combine a bootstrap over
test patients with the seed spread, and the difference of the mean to the real row in points,
paired over the same resampled patients and the same seeds (``evaluation.seeded``).

The cross-dataset table (real data only) trains one classifier per dataset (PhantomCXR site,
or real file list) and tests it on every dataset's test split.

Settings live in the ``utility`` profile section (``UTILITY_DEFAULTS``); ``utility_config``
checks them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import config as config_mod
from ..releases import GENERATED as RELEASES
from ..data.imageset import LABELS, N_LABELS, ImageSet
from .classifier import Classifier, classifier_config, fit_classifier
from .seeded import seeded_auroc

UTILITY_DEFAULTS: dict = {
    # Releases with a row in the main table (``releases.RELEASES``), in display order.
    "releases": ["edm_class", "diadm_raw", "diadm_filter", "diadm_filter_2nd", "diadm_filter_4"],
    # Overrides of the `classifier` section for EVERY classifier this step trains — the real row
    # included (retrained then, instead of reusing stage `classifier`), so the comparison stays
    # at equal budget. {} (default/paper): exactly the reference classifier's recipe.
    "classifier": {},
    "seeds": 3,              # classifier seeds per row (>= 1); seed 0 is the profile's seed, the rest derived
    # Rows compared at equal optimiser steps: a release of n images trains for
    # round(epochs · n_real / n) epochs (``equal_step_epochs``), so a release four times the real
    # split's size takes the real row's steps in a quarter of the epochs, and rows differ in their
    # data, not in their compute. False (the paper's): every row trains ``classifier.epochs``.
    "equal_steps": False,
    "n_boot": 1000,          # bootstrap resamples (of test patients) for every interval (>= 1)
    "level": 0.95,           # confidence level of every interval, in (0, 1)
    # Cross-dataset table: name → overrides of the `data` section that build that dataset with
    # otherwise the same data settings (PhantomCXR: {site: b}; real data: {filelist: mimic.txt}).
    # A dataset whose merged settings equal `data` reuses the data stage and the real classifier.
    # A profile's mapping replaces this one; {} skips the table.
    "cross_site": {"site a": {"site": "a"}, "site b": {"site": "b"}, "site c": {"site": "c"}},
    # Fidelity/diversity feature space (evaluation/fidelity.py): "independent" = penultimate
    # features of a classifier trained on the real split with its own seed (neither the
    # pseudo-conditioning encoder nor the filter's consistency classifier); "reference" = the
    # reference classifier's (free, but the filter selected samples with that network).
    "features": "independent",
    "alpha_e": 0.05,         # IRS occupancy-bound tail mass, in (0, 0.5)
    "readme": False,         # 09_summary: True writes README.md's results section (default profile
                             #   only); False writes the run directory's copy (CI never edits README)
}


def utility_config(cfg: dict) -> dict:
    """The profile's ``utility`` section over ``UTILITY_DEFAULTS``; bad values name the field."""
    u = config_mod.section(cfg, "utility", UTILITY_DEFAULTS)
    given = cfg.get("utility") or {}
    if "cross_site" in given:  # a profile's dataset mapping replaces the default one (not merged into it)
        u["cross_site"] = given["cross_site"] or {}
    if not isinstance(u["releases"], (list, tuple)) or not all(r in RELEASES for r in u["releases"]):
        raise config_mod.ConfigError(f"utility.releases={u['releases']!r}: each must be one of {list(RELEASES)}")
    if len(set(u["releases"])) != len(u["releases"]):
        raise config_mod.ConfigError(f"utility.releases={u['releases']!r}: duplicates")
    if not isinstance(u["n_boot"], int) or isinstance(u["n_boot"], bool) or u["n_boot"] < 1:
        raise config_mod.ConfigError(f"utility.n_boot={u['n_boot']!r}: must be an integer >= 1")
    if not isinstance(u["seeds"], int) or isinstance(u["seeds"], bool) or u["seeds"] < 1:
        raise config_mod.ConfigError(f"utility.seeds={u['seeds']!r}: must be an integer >= 1")
    if not isinstance(u["equal_steps"], bool):
        raise config_mod.ConfigError(f"utility.equal_steps={u['equal_steps']!r}: must be true or false")
    if not 0 < u["level"] < 1:
        raise config_mod.ConfigError(f"utility.level={u['level']!r}: must be in (0, 1)")
    if not isinstance(u["cross_site"], dict) or not all(isinstance(v, dict) for v in u["cross_site"].values()):
        raise config_mod.ConfigError("utility.cross_site must map dataset names to `data` overrides (mappings)")
    if u["features"] not in ("independent", "reference"):
        raise config_mod.ConfigError(f"utility.features={u['features']!r}: choose 'independent' or 'reference'")
    if not 0 < u["alpha_e"] < 0.5:
        raise config_mod.ConfigError(f"utility.alpha_e={u['alpha_e']!r}: must be in (0, 0.5)")
    if not isinstance(u["readme"], bool):
        raise config_mod.ConfigError(f"utility.readme={u['readme']!r}: must be true or false")
    classifier_config({**(cfg.get("classifier") or {}), **u["classifier"]})  # typos fail here, early
    return u


def training_config(classifier_section: dict | None, overrides: dict | None) -> dict:
    """The classifier recipe of this step: the ``classifier`` section with ``utility.classifier``
    on top (``augment`` merged key by key), checked by ``classifier_config``."""
    return classifier_config(config_mod.deep_merge(classifier_section or {}, overrides or {}))


def equal_step_epochs(epochs: int, n_reference: int, n_train: int) -> int:
    """Epochs that give a training set of ``n_train`` images the optimiser steps that ``epochs``
    epochs of ``n_reference`` images take: ``max(1, round(epochs · n_reference / n_train))``.

    Args:
        epochs: the recipe's epochs on the reference set (>= 1).
        n_reference: images in the reference (real) training split (>= 1).
        n_train: images in the training set at hand (>= 1).
    """
    if min(int(epochs), int(n_reference), int(n_train)) < 1:
        raise ValueError(f"equal_step_epochs needs epochs, n_reference and n_train >= 1, "
                         f"got {epochs}, {n_reference}, {n_train}")
    return max(1, round(int(epochs) * int(n_reference) / int(n_train)))


# ----------------------------------------------------------------------------- one row
def train_and_predict(train_set: ImageSet, val_set: ImageSet, test_set: ImageSet, clf_cfg: dict, seed: int,
                      checkpoint_dir=None, progress: bool = True) -> tuple[Classifier, np.ndarray]:
    """Fit the classifier on ``train_set`` (epoch chosen on the *real* ``val_set``) and return it
    with its (N_test, 8) sigmoid outputs on the real ``test_set``."""
    clf = fit_classifier(train_set, val_set, clf_cfg, seed=seed, checkpoint_dir=checkpoint_dir, progress=progress)
    return clf, clf.predict_proba(test_set).astype(np.float32)


def utility_row(y_test, probs, real_probs=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                groups=None) -> dict:
    """One row of the main table from test predictions of one or several classifier seeds.

    y_test: (N, 8) real test labels. probs: (S, N, 8) predictions of the S classifiers (seeds)
    trained on this row's training set, or (N, 8) for one; real_probs: the real-data classifiers'
    predictions with the same seeds on the same images (None for the real row itself).
    groups: (N,) patient ids of the test images (the bootstrap then resamples patients).
    Intervals combine the test bootstrap and the seed spread (``evaluation.seeded``); the
    difference is paired over resamples and seeds.

    Returns ``{"auroc": {class: value}, "lo": {...}, "hi": {...}, "seed_sd": {...}}`` (per class
    and "mean", in [0, 1]; ``boot_lo`` / ``boot_hi``: the test-sampling part alone),
    ``"diff_points", "diff_lo", "diff_hi"`` (100 × (mean − mean_real),
    0 for the real row), ``"per_seed"`` (mean AUROC of each seed), ``"n_seeds"``,
    ``"n_boot_valid"`` and ``"note"`` (the classes that are not estimable on this test set).
    """
    y_test, probs = np.asarray(y_test), np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if real_probs is not None:
        real_probs = np.asarray(real_probs)
        real_probs = real_probs[None] if real_probs.ndim == 2 else real_probs
    if y_test.ndim != 2 or y_test.shape[1] != N_LABELS or probs.ndim != 3 or probs.shape[1:] != y_test.shape:
        raise ValueError(f"utility_row: y_test must be (N, {N_LABELS}) and probs (seeds, N, {N_LABELS}) on the same "
                         f"images, got {y_test.shape}, {probs.shape}")
    if real_probs is not None and real_probs.shape != probs.shape:
        raise ValueError(f"utility_row: real_probs must be {probs.shape} (same seeds, same images), got {real_probs.shape}")
    r = seeded_auroc(y_test, probs, real_probs, list(LABELS), groups=groups, n_boot=max(n_boot, 1), seed=seed,
                     level=level)
    row = {key: r[key] for key in ("auroc", "lo", "hi", "boot_lo", "boot_hi", "seed_sd", "per_seed", "n_seeds",
                                   "n_boot_valid", "note")}
    if real_probs is None:
        row.update(diff_points=0.0, diff_lo=0.0, diff_hi=0.0)
    else:
        row.update(diff_points=100 * r["diff"], diff_lo=100 * r["diff_lo"], diff_hi=100 * r["diff_hi"],
                   diff_per_seed=[100 * d for d in r["diff_per_seed"]])
    return row


def _ci_text(value: float, lo: float, hi: float, digits: int = 1, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if lo is None or not np.isfinite(lo):
        return fmt.format(value)
    return f"{fmt.format(value)} [{fmt.format(lo)}, {fmt.format(hi)}]"


NOT_ESTIMABLE = "not estimable:"  # a row's ``note`` starts with this when its mean is not comparable


def is_estimable(row: dict) -> bool:
    """False for a row marked by ``mark_not_estimable`` (its mean and Δ are not shown)."""
    return not row.get("note", "").startswith(NOT_ESTIMABLE)


def mark_not_estimable(row: dict, missing: list[str]) -> None:
    """Mark ``row`` (a ``utility_row``) as trained on a set without the findings ``missing``."""
    row["note"] = "; ".join(filter(None, [f"{NOT_ESTIMABLE} the training set has no image of {', '.join(missing)}",
                                          row.get("note", "")]))


def not_estimable(label_counts) -> list[str]:
    """The findings a training set has no image of: a classifier trained on it cannot have
    learned them, so its row's mean AUROC is not comparable with the others."""
    counts = np.asarray(label_counts)
    return [name for name, k in zip(LABELS, counts) if k == 0]


def utility_table(rows: dict[str, dict], labels: dict[str, str] | None = None, n_train: dict | None = None) -> pd.DataFrame:
    """The paper's main table: one row per training set (``rows``: name → ``utility_row``),
    per-class AUROC in points (×100, mean over seeds), the mean with its 95 % interval (test
    patients × seeds), the seed spread, and Δ to real in points with its paired interval.
    ``labels`` maps row names to display names; ``n_train`` adds a column. A row whose
    ``note`` starts with "not estimable" (a training set without some finding) shows that
    instead of its mean and Δ; other notes (test classes left out of the mean) are a column."""
    out = {}
    for name, r in rows.items():
        line = {}
        if n_train is not None:
            line["n train"] = int(n_train[name])
        for c in LABELS:
            v = r["auroc"].get(c, np.nan)
            line[c] = "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"
        line["seeds"] = int(r.get("n_seeds", 1))
        if not is_estimable(r):
            line["mean AUROC [95% CI]"] = line["Δ to real (points)"] = "not estimable"
        else:
            line["mean AUROC [95% CI]"] = _ci_text(100 * r["auroc"]["mean"], 100 * r["lo"]["mean"], 100 * r["hi"]["mean"])
            line["Δ to real (points)"] = "0 (reference)" if r["diff_points"] == 0 and r["diff_lo"] == 0 \
                and r["diff_hi"] == 0 else _ci_text(r["diff_points"], r["diff_lo"], r["diff_hi"], signed=True)
        sd = r.get("seed_sd", {}).get("mean", np.nan)
        line["seed sd (points)"] = "–" if sd is None or not np.isfinite(sd) else f"{100 * sd:.1f}"
        line["note"] = r.get("note", "")
        out[(labels or {}).get(name, name)] = line
    df = pd.DataFrame.from_dict(out, orient="index")
    if not df["note"].astype(bool).any():
        df = df.drop(columns="note")
    df.index.name = "training set"
    return df


# ----------------------------------------------------------------------------- cross-dataset
def cross_table(aurocs: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Mean AUROC in points, rows = training dataset, columns = test dataset (paper layout).
    ``aurocs``: {train name: {test name: mean AUROC in [0, 1]}}."""
    df = pd.DataFrame({tr: {te: 100 * v for te, v in row.items()} for tr, row in aurocs.items()}).T
    df.index.name = "train \\ test"
    return df
