"""Notebook 07's tables: train on each release, test on real; fidelity and diversity; cross-site."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import seeds
from ..data.imageset import LABELS, ImageSet, images_to_uint8
from ..evaluation.fidelity import FEATURE_SPACE_NOTE, fidelity_row, penultimate_features
from ..evaluation.stats import frechet_distance
from ..evaluation.utility import cross_table, utility_row, utility_table
from ..pipeline import Pipeline
from ..releases import REAL, label
from ..stages.data import load_splits
from ..stages.fidelity import load_feature_net, load_fidelity
from ..stages.utility import load_cross_site, load_test_probs, load_training_info

__all__ = ["utility_rows", "utility_main", "utility_differences", "utility_fidelity", "utility_cross_site",
           "feature_space_note", "sample_fd"]


def utility_rows(pipe: Pipeline, releases=None) -> dict:
    """{"rows": {row: utility_row}, "info": {row: info.json}} for "real" + ``releases`` (default
    ``utility.releases``; each trained on first use). CIs: ``utility.n_boot`` resamples of the test images, seeded by
    the profile's seed (the same resamples for every row: paired)."""
    u = pipe.cfg["utility"]
    y_test = load_splits(pipe, mmap=True)["test"].labels
    boot_seed = seeds.derive(int(pipe.cfg["seed"]), "utility", "bootstrap")
    probs = {row: load_test_probs(pipe, row) for row in [REAL, *(u["releases"] if releases is None else releases)]}
    rows = {row: utility_row(y_test, p, None if row == REAL else probs[REAL], u["n_boot"], boot_seed, u["level"])
            for row, p in probs.items()}
    return {"rows": rows, "info": {row: load_training_info(pipe, row) for row in probs}}


def utility_main(result: dict) -> pd.DataFrame:
    """The paper's main table from ``utility_rows`` (display names; AUROC in points)."""
    rows = result["rows"]
    return utility_table(rows, {row: label(row) for row in rows}, {k: v["n_train"] for k, v in result["info"].items()})


def utility_differences(result: dict) -> pd.DataFrame:
    """Δ mean AUROC to real (points, paired 95 % CI) per release, and whether the CI excludes a
    loss of more than 1 point (the paper's headline)."""
    rows = {label(n): {"Δ (points)": r["diff_points"], "lo": r["diff_lo"], "hi": r["diff_hi"],
                       "CI excludes a loss > 1 point": bool(r["diff_lo"] > -1.0)}
            for n, r in result["rows"].items() if n != REAL}
    return pd.DataFrame(rows).T


def utility_fidelity(pipe: Pipeline) -> pd.DataFrame:
    """One row per release (+ the real test split as reference): FD to train, IRS_α, IRS_∞ with
    bounds, adjusted IRS with bounds. Raw numbers (floats)."""
    u = pipe.cfg["utility"]
    rows = {label(name): load_fidelity(pipe, name) for name in u["releases"]}
    _, train_f, test_f = load_feature_net(pipe)
    ref = fidelity_row(test_f, train_f, test_f, u["alpha_e"])
    rows["real test split (reference)"] = {**ref, "fd": ref["fd_test"]}
    cols = ["n", "fd", "irs_alpha", "irs_inf", "irs_inf_lo", "irs_inf_hi", "at_cap", "irs_adjusted",
            "irs_adjusted_lo", "irs_adjusted_hi", "fd_test", "irs_real_inf"]
    df = pd.DataFrame.from_dict(rows, orient="index")[cols]
    df.index.name = "release"
    return df


def utility_cross_site(pipe: Pipeline) -> pd.DataFrame:
    """Mean AUROC (points), rows = training dataset, columns = test dataset."""
    res = load_cross_site(pipe)
    return cross_table({tr: {te: v["auroc"] for te, v in row.items()} for tr, row in res["auroc"].items()})


def feature_space_note(pipe: Pipeline) -> str:
    return FEATURE_SPACE_NOTE[pipe.cfg["utility"]["features"]]


def sample_fd(pipe: Pipeline, samples) -> dict:
    """Fréchet distance of generated images ((N, 1, H, W) in [-1, 1]) to the real training split in
    the fidelity feature space (an independently seeded classifier: neither the
    pseudo-conditioning encoder nor the auditor), beside the real test split's own distance
    (``fd_test``, the floor at its size; FD grows as n shrinks, so compare like sizes)."""
    images = images_to_uint8(samples)
    n = len(images)
    as_set = ImageSet(images, np.zeros((n, len(LABELS)), np.uint8), np.full(n, "sample"),
                      np.array([f"sample_{i}" for i in range(n)]))
    feat_clf, train_f, test_f = load_feature_net(pipe)
    return {"n": n, "fd": frechet_distance(penultimate_features(feat_clf, as_set), train_f),
            "fd_test": frechet_distance(test_f, train_f), "n_test": len(test_f)}
