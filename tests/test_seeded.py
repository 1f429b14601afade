"""AUROC over classifier seeds: the combined interval, the cluster bootstrap, not-estimable classes."""

import numpy as np
import pytest

from trichotomy_lib.data.imageset import LABELS
from trichotomy_lib.evaluation.classifier.training import _check_training_set
from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.evaluation.seeded import combine_intervals, seeded_auroc
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import not_estimable, utility_row, utility_table


def labels(n, c=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, c), np.uint8)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    return y


def scores(y, noise, seed):
    return y + np.random.default_rng(seed).normal(0, noise, y.shape)


def test_identical_seeds_give_the_bootstrap_interval_and_spread_widens_it():
    y = labels(400)
    one = scores(y, 1.0, 1)
    same = seeded_auroc(y, np.stack([one, one, one]), n_boot=300, seed=2)
    table = auroc_table(y, one, n_boot=300, seed=2)
    assert same["auroc"]["mean"] == pytest.approx(table.loc["mean", "auroc"])
    assert (same["lo"]["mean"], same["hi"]["mean"]) == pytest.approx((table.loc["mean", "lo"], table.loc["mean", "hi"]))
    assert same["seed_sd"]["mean"] == pytest.approx(0, abs=1e-12)
    spread = seeded_auroc(y, np.stack([scores(y, s, 1) for s in (0.9, 1.0, 1.15)]), n_boot=300, seed=2)
    per = np.array(spread["per_seed"])
    assert spread["auroc"]["mean"] == pytest.approx(per.mean())
    assert spread["seed_sd"]["mean"] == pytest.approx(per.std(ddof=1))
    width = spread["hi"]["mean"] - spread["lo"]["mean"]
    assert spread["lo"]["mean"] < spread["boot_lo"]["mean"] < spread["boot_hi"]["mean"] < spread["hi"]["mean"]
    boot_only = [seeded_auroc(y, scores(y, s, 1)[None], n_boot=300, seed=2) for s in (0.9, 1.0, 1.15)]
    assert width > max(b["hi"]["mean"] - b["lo"]["mean"] for b in boot_only)
    assert width > 2 * 4.30 * per.std(ddof=1) / np.sqrt(3) * 0.99       # at least the t(2) seed term


def test_combine_intervals_in_quadrature():
    lo, hi = combine_intervals(0.8, 0.77, 0.82, [0.79, 0.80, 0.81], 0.95)
    t_se = 4.302653 * 0.01 / np.sqrt(3)
    assert lo == pytest.approx(0.8 - np.hypot(0.03, t_se)) and hi == pytest.approx(0.8 + np.hypot(0.02, t_se))
    assert combine_intervals(0.8, 0.77, 0.82, [0.8], 0.95) == (0.77, 0.82)   # one seed: bootstrap only


def test_cluster_bootstrap_does_not_count_copies_as_evidence():
    y = labels(150)
    s = scores(y, 1.2, 3)
    k = 4                                              # every patient scanned 4 times, identical scans
    y4, s4 = np.repeat(y, k, 0), np.repeat(s, k, 0)
    pids = np.repeat(np.arange(150), k).astype(str)
    by_image = seeded_auroc(y4, s4[None], n_boot=400, seed=0)
    by_patient = seeded_auroc(y4, s4[None], groups=pids, n_boot=400, seed=0)
    base = seeded_auroc(y, s[None], n_boot=400, seed=0)
    w = lambda r: r["hi"]["mean"] - r["lo"]["mean"]
    assert w(by_image) < 0.7 * w(base)                # images as independent: falsely narrow
    assert 0.8 < w(by_patient) / w(base) < 1.25       # patients resampled: the honest width
    with pytest.raises(ValueError, match="one label per image"):
        seeded_auroc(y4, s4[None], groups=pids[:-1], n_boot=10)


def test_paired_difference_over_seeds_and_patients():
    y = labels(300)
    good = np.stack([scores(y, 0.5, s) for s in range(3)])
    poor = np.stack([scores(y, 1.5, 10 + s) for s in range(3)])
    r = seeded_auroc(y, poor, good, n_boot=300, seed=1)
    assert r["diff"] == pytest.approx(np.mean(r["diff_per_seed"])) and r["diff_hi"] < 0
    assert r["diff"] == pytest.approx(r["auroc"]["mean"] - seeded_auroc(y, good, n_boot=10)["auroc"]["mean"])
    with pytest.raises(ValueError, match="same seeds"):
        seeded_auroc(y, poor, good[:2], n_boot=10)


def test_not_estimable_classes_are_named_never_a_silent_nan():
    y = labels(200)
    y[:, 2] = 0                                        # a test population without positives of class 2
    y[y.sum(1) == 0, 0] = 1
    r = seeded_auroc(y, np.stack([scores(y, 1.0, s) for s in range(2)]), n_boot=50,
                     class_names=["a", "b", "c", "d"])
    assert np.isnan(r["auroc"]["c"]) and np.isfinite(r["auroc"]["mean"])
    assert "c (no positives)" in r["note"]
    with pytest.raises(ValueError, match="no class has both"):
        seeded_auroc(np.ones((10, 2), np.uint8), np.zeros((1, 10, 2)), n_boot=5)


def test_a_release_without_a_finding_is_marked_not_estimable():
    assert not_estimable([5, 0, 3, 1, 1, 1, 0, 2]) == [LABELS[1], LABELS[6]]
    y = labels(160, c=8)
    row = utility_row(y, scores(y, 1.0, 0)[None], scores(y, 0.8, 1)[None], n_boot=20)
    row["note"] = "not estimable: the training set has no image of Pneumonia"
    real = utility_row(y, scores(y, 0.8, 1)[None], None, n_boot=20)
    table = utility_table({"real": real, "syn": row})
    assert table.loc["syn", "mean AUROC [95% CI]"] == "not estimable"
    assert table.loc["syn", "note"].endswith("Pneumonia")
    empty = ImageSet(np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8), np.uint8), np.array(list("abcd")),
                     np.array(list("abcd")))
    with pytest.raises(ValueError, match="every label of release is 0"):
        _check_training_set(empty, "release")
