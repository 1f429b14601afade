"""Tests for trichotomy_lib.evaluation.stats and .irs: hand-computed cases, brute force,
closed forms and agreement with sklearn / scipy."""

import itertools
import time

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.distance import cdist
from scipy.stats import binom, norm, rankdata
from sklearn.metrics import roc_auc_score

from trichotomy_lib.evaluation import irs, stats
from trichotomy_lib.evaluation.stats import (
    adjusted_irs, auroc_difference_ci, auroc_table, bootstrap_ci, mean_auroc,
    cohen_nissim_isolation_probability, frechet_distance, frechet_distance_from_stats,
    image_retrieval_score, nearest_neighbours, paired_singling_out_risk, singling_out_risk, wilson_interval)


def _multilabel(n=2000, c=4, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.linspace(0.05, 0.4, c)).astype(int)
    return y, signal * y + rng.normal(size=(n, c))


# --------------------------------------------------------------------------- Wilson
def test_wilson_matches_closed_form():
    k, n, z = 3, 10, norm.ppf(0.975)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
    rate, lo, hi = wilson_interval(k, n)
    assert rate == 0.3
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    assert wilson_interval(0, 10)[1] == 0.0 and wilson_interval(10, 10)[2] == 1.0


def test_wilson_bad_input():
    with pytest.raises(ValueError, match="n >= 1"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    with pytest.raises(ValueError):
        wilson_interval(1, 3, level=1.5)


# --------------------------------------------------------------------------- AUROC
def test_weighted_auroc_equals_sklearn_on_expanded_resample():
    """The vectorised AUROC on multiplicities equals sklearn on the explicitly resampled
    data, with heavy ties (scores rounded to 1 decimal)."""
    rng = np.random.default_rng(1)
    y, s = _multilabel(300, 1, seed=1)
    s = np.round(s, 1)
    plan = stats._AurocPlan(y[:, 0].astype(bool), s[:, 0])
    assert plan(np.ones((1, 300), np.float32))[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 3, size=(5, 300)).astype(np.float32)
    got = plan(w)
    for b in range(5):
        rep = np.repeat(np.arange(300), w[b].astype(int))
        assert got[b] == pytest.approx(roc_auc_score(y[rep, 0], s[rep, 0]), abs=1e-10)


def test_auroc_table_estimates_and_cis():
    y, s = _multilabel()
    df = auroc_table(y, s, class_names=list("abcd"), n_boot=500, seed=3)
    assert list(df.index) == ["a", "b", "c", "d", "mean"]
    per_class = [roc_auc_score(y[:, j], s[:, j]) for j in range(4)]
    np.testing.assert_allclose(df["auroc"].iloc[:4], per_class, atol=1e-12)
    assert df.loc["mean", "auroc"] == pytest.approx(np.mean(per_class))
    assert (df["lo"] < df["auroc"]).all() and (df["auroc"] < df["hi"]).all()
    assert (df["n_pos"].iloc[:4] == y.sum(0)).all() and (df["n_boot_valid"] == 500).all()
    # mean's CI narrower than the widest class CI, and reproducible with the same seed
    assert (df.loc["mean", "hi"] - df.loc["mean", "lo"]) < (df["hi"] - df["lo"]).iloc[:4].max()
    assert df.equals(auroc_table(y, s, class_names=list("abcd"), n_boot=500, seed=3))


def test_mean_auroc_is_the_mean_over_classes_with_both_labels():
    y, s = _multilabel()
    per_class = [roc_auc_score(y[:, j], s[:, j]) for j in range(4)]
    assert mean_auroc(y, s) == pytest.approx(np.mean(per_class))
    y_missing = y.copy()
    y_missing[:, 1] = 0                              # a class without positives is left out, not a NaN
    assert mean_auroc(y_missing, s) == pytest.approx(np.mean([per_class[0], *per_class[2:]]))


def test_auroc_ci_agrees_with_scipy_bootstrap():
    """Same percentile bootstrap by a different route (scipy.stats.bootstrap + sklearn)."""
    y, s = _multilabel(400, 1, seed=4)
    df = auroc_table(y, s, n_boot=2000, seed=0)

    def mann_whitney_auc(yy, ss):                  # fast stand-in for roc_auc_score
        n1 = yy.sum()
        n0 = len(yy) - n1
        return (rankdata(ss)[yy == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)

    assert mann_whitney_auc(y[:, 0], s[:, 0]) == pytest.approx(roc_auc_score(y, s))
    est, lo, hi = bootstrap_ci(mann_whitney_auc, y[:, 0], s[:, 0], n_boot=2000, seed=1)
    assert est == pytest.approx(df.loc["class_0", "auroc"])
    assert lo == pytest.approx(df.loc["class_0", "lo"], abs=0.01)
    assert hi == pytest.approx(df.loc["class_0", "hi"], abs=0.01)


def test_auroc_degenerate_classes_and_skipped_resamples():
    y, s = _multilabel(30, 3, seed=5)
    y[:, 0] = 0                                     # no positives at all
    y[:, 1] = 0
    y[7, 1] = 1                                     # a single positive: often resampled away
    y[:3, 2], y[3:6, 2] = 1, 0
    df = auroc_table(y, s, class_names=["none", "one", "ok"], n_boot=400, seed=2)
    assert np.isnan(df.loc["none", ["auroc", "lo", "hi"]].astype(float)).all()
    assert df.loc["none", "note"] == "no positives"
    # valid resamples for "one" = those that contain image 7 (same RNG stream)
    counts = np.concatenate(list(stats._iter_boot_counts(30, 400, 2)))
    assert df.loc["one", "n_boot_valid"] == (counts[:, 7] > 0).sum()
    assert 0 < df.loc["one", "n_boot_valid"] < 400
    # the mean skips "none", keeps "one" and "ok"
    ok = [roc_auc_score(y[:, j], s[:, j]) for j in (1, 2)]
    assert df.loc["mean", "auroc"] == pytest.approx(np.mean(ok))
    assert "2 of 3" in df.loc["mean", "note"]
    assert df.loc["mean", "n_boot_valid"] <= df.loc["one", "n_boot_valid"]
    with pytest.raises(ValueError, match="0/1"):
        auroc_table(y + 1, s)
    with pytest.raises(ValueError, match="NaN"):
        auroc_table(y, np.where(y == 1, np.nan, s))


def test_auroc_table_speed_10k_by_8():
    y, s = _multilabel(10_000, 8, seed=6)
    t = time.perf_counter()
    auroc_table(y, s, n_boot=1000)
    assert time.perf_counter() - t < 5.0


def test_auroc_difference_ci():
    y, s = _multilabel(1500, 4, seed=7)
    same = auroc_difference_ci(y, s, s, n_boot=200)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0
    noisy = s + np.random.default_rng(8).normal(scale=1.0, size=s.shape)
    d = auroc_difference_ci(y, s, noisy, n_boot=500, seed=1)
    assert d["auroc_a"] == pytest.approx(auroc_table(y, s, n_boot=0).loc["mean", "auroc"])
    assert d["diff"] == pytest.approx(d["auroc_a"] - d["auroc_b"])
    assert 0 < d["lo"] < d["diff"] < d["hi"]        # removing noise helps, clearly
    # paired: the CI of the difference is narrower than either mean's own CI
    width_a = np.diff(auroc_table(y, s, n_boot=500, seed=1).loc["mean", ["lo", "hi"]])[0]
    assert d["hi"] - d["lo"] < width_a


def test_bootstrap_ci_mean_close_to_normal_theory():
    x = np.random.default_rng(9).normal(size=400)
    est, lo, hi = bootstrap_ci(np.mean, x, n_boot=2000, seed=0)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert est == pytest.approx(x.mean())
    assert lo == pytest.approx(est - half, abs=0.02) and hi == pytest.approx(est + half, abs=0.02)


# --------------------------------------------------------------------------- Fréchet
def test_frechet_diagonal_closed_form_and_1d():
    rng = np.random.default_rng(10)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance_from_stats(mu_a, np.diag(a), mu_b, np.diag(b)) == \
        pytest.approx(expected, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (sd1 - sd2)^2
    assert frechet_distance_from_stats([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(5.0)


def test_frechet_general_covariances():
    """Non-commuting covariances: Tr (Σa Σb)^½ = Tr (Σa^½ Σb Σa^½)^½ (symmetric route)."""
    rng = np.random.default_rng(11)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    sa, sb = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    ra = linalg.sqrtm(sa).real
    ev = np.linalg.eigvalsh(ra @ sb @ ra)
    expected = 1.0 + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(ev, 0, None)).sum()
    mu_b = np.eye(5)[0]
    assert frechet_distance_from_stats(np.zeros(5), sa, mu_b, sb) == pytest.approx(expected, rel=1e-8)


def test_frechet_from_features():
    rng = np.random.default_rng(12)
    fa, fb = rng.normal(size=(300, 4)), 2 * rng.normal(size=(200, 4)) + 1
    d = frechet_distance(fa, fb)
    assert d == pytest.approx(frechet_distance_from_stats(
        fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False)))
    assert d == pytest.approx(frechet_distance(fb, fa), rel=1e-8)   # symmetric
    assert 4 + 4 * 1 - 2 < d < 4 + 4 * 1 + 2                        # ≈ ||Δmu||² + 4·(2-1)²
    assert abs(frechet_distance(fa, fa)) < 1e-8
    # more dimensions than samples: singular covariances, still finite and ~0 for identical sets
    few = rng.normal(size=(10, 32))
    assert abs(frechet_distance(few, few)) < 1e-3
    assert np.isfinite(frechet_distance(few, rng.normal(size=(12, 32))))
    with pytest.raises(ValueError):
        frechet_distance(fa, fb[:, :3])


def test_frechet_rejects_invalid_covariance():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance_from_stats(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------- singling out
def test_singling_out_risk_propagation():
    out = singling_out_risk(30, 100, 10, 120)
    z = norm.ppf(0.975)
    a, a_lo, a_hi = wilson_interval(30, 100)
    c, c_lo, c_hi = wilson_interval(10, 120)
    assert out["attack_rate"] == 0.3 and out["attack_ci"] == (a_lo, a_hi)
    assert out["control_rate"] == pytest.approx(1 / 12) and out["control_ci"] == (c_lo, c_hi)
    assert out["risk"] == pytest.approx((0.3 - 1 / 12) / (1 - 1 / 12))
    # error propagation with numerical partial derivatives of R(a, c) = (a - c) / (1 - c)
    r = lambda a_, c_: (a_ - c_) / (1 - c_)  # noqa: E731
    h = 1e-6
    da, dc = (r(a + h, c) - r(a - h, c)) / (2 * h), (r(a, c + h) - r(a, c - h)) / (2 * h)
    sr = np.hypot(da * (a_hi - a_lo) / (2 * z), dc * (c_hi - c_lo) / (2 * z))
    assert out["risk_lo"] == pytest.approx(out["risk"] - z * sr, rel=1e-6)
    assert out["risk_hi"] == pytest.approx(out["risk"] + z * sr, rel=1e-6)
    assert out["warning"] is None


def test_singling_out_risk_warning_and_clipping():
    out = singling_out_risk(5, 100, 9, 100)
    assert out["risk"] == 0.0 and out["risk_lo"] == 0.0 and out["warning"]
    out = singling_out_risk(100, 100, 0, 100)
    assert out["risk"] == 1.0 and out["risk_hi"] == 1.0 and out["risk_lo"] < 1.0
    out = singling_out_risk(5, 10, 10, 10)
    assert np.isnan(out["risk"]) and "undefined" in out["warning"]


def _hits(n, a, c, seed):
    rng = np.random.default_rng(seed)
    return rng.random(n) < a, rng.random(n) < c


def test_paired_singling_out_risk_keeps_the_point_estimate():
    att, ctl = _hits(400, 0.3, 0.1, 0)
    out = paired_singling_out_risk(att, ctl, n_boot=500, seed=1)
    ref = singling_out_risk(int(att.sum()), 400, int(ctl.sum()), 400)
    for key in ("attack_rate", "control_rate", "risk", "risk_unclipped", "warning"):
        assert out[key] == ref[key], key
    assert out["interval"] == "paired cluster bootstrap" and out["n_groups"] == 400
    assert out["risk_lo"] < out["risk"] < out["risk_hi"]
    assert out["attack_ci"][0] < out["attack_rate"] < out["attack_ci"][1]


def test_paired_singling_out_risk_resamples_whole_groups():
    """Every predicate repeated 5 times: as 5-predicate groups the interval is the one of the
    originals (the same resamples, exactly); counted as independent it shrinks by ~sqrt(5)."""
    att, ctl = _hits(200, 0.3, 0.1, 2)
    once = paired_singling_out_risk(att, ctl, np.arange(200), n_boot=1000, seed=3)
    groups = np.repeat(np.arange(200), 5)
    grouped = paired_singling_out_risk(np.repeat(att, 5), np.repeat(ctl, 5), groups, n_boot=1000, seed=3)
    naive = paired_singling_out_risk(np.repeat(att, 5), np.repeat(ctl, 5), None, n_boot=1000, seed=3)
    assert grouped["n_groups"] == 200
    assert (grouped["risk_lo"], grouped["risk_hi"]) == pytest.approx((once["risk_lo"], once["risk_hi"]), abs=1e-6)
    width = lambda r: r["risk_hi"] - r["risk_lo"]  # noqa: E731
    assert width(naive) < 0.6 * width(grouped)


def test_paired_singling_out_risk_uses_the_pairing():
    """Predicates that isolate in both populations or in neither carry no evidence of risk: with
    attack and control outcomes mostly equal, the paired interval is far narrower than the one of
    two independent rates."""
    rng = np.random.default_rng(4)
    ctl = rng.random(600) < 0.3
    att = ctl.copy()
    att[np.flatnonzero(~ctl)[:20]] = True            # 20 more isolations in training than in control
    paired = paired_singling_out_risk(att, ctl, n_boot=2000, seed=5)
    ref = singling_out_risk(int(att.sum()), 600, int(ctl.sum()), 600)
    assert paired["risk"] == pytest.approx(ref["risk"])
    assert paired["risk_lo"] > ref["risk_lo"] + 0.02 and paired["risk_hi"] < ref["risk_hi"] - 0.02
    assert paired["risk_lo"] > 0                      # the leak is seen; two independent rates miss it
    assert ref["risk_lo"] == 0.0


def test_paired_singling_out_risk_covers_the_truth():
    """Independent predicates, true a = 0.15, c = 0.10: the 95 % interval holds the true risk in
    about 95 % of 200 repetitions."""
    truth = (0.15 - 0.10) / 0.9
    cover = 0
    for rep in range(200):
        att, ctl = _hits(500, 0.15, 0.10, 100 + rep)
        r = paired_singling_out_risk(att, ctl, n_boot=400, seed=rep)
        cover += r["risk_lo"] <= truth <= r["risk_hi"]
    assert 0.89 <= cover / 200 <= 0.99


def test_paired_singling_out_risk_with_several_control_populations():
    """K control populations: a predicate's control outcome is its isolation rate over them. The
    point estimate is the pooled one, and the interval narrows (the control's standard error falls
    by up to 1/√K; the attack's stays), here from 1 to 4 populations at a = 0.15, c = 0.1."""
    rng = np.random.default_rng(7)
    att = rng.random(1000) < 0.15
    ctl4 = (rng.random((4, 1000)) < 0.1).mean(0)
    ctl1 = rng.random(1000) < 0.1
    four = paired_singling_out_risk(att, ctl4, n_boot=2000, seed=1, control_draws=4)
    one = paired_singling_out_risk(att, ctl1, n_boot=2000, seed=1)
    ref = singling_out_risk(int(att.sum()), 1000, int(round(ctl4.sum() * 4)), 4000)
    for key in ("attack_rate", "control_rate", "risk_unclipped"):
        assert four[key] == pytest.approx(ref[key]), key
    width = lambda r: r["risk_hi"] - r["risk_lo"]  # noqa: E731
    assert width(four) < 0.85 * width(one)
    assert np.ptp(four["control_ci"]) < 0.6 * np.ptp(one["control_ci"])
    with pytest.raises(ValueError, match="multiples of 1/control_draws"):
        paired_singling_out_risk(att, np.full(1000, 0.3), control_draws=4)
    with pytest.raises(ValueError, match="control_draws must be"):
        paired_singling_out_risk(att, ctl1, control_draws=0)
    with pytest.raises(ValueError, match="control_draws must be"):
        paired_singling_out_risk(att, ctl1, control_draws=True)
    with pytest.raises(ValueError, match="booleans but control_draws=4"):
        paired_singling_out_risk(att, ctl1, control_draws=4)
    # no predicate isolates anyone: the control's interval counts P trials, not K·P
    zero = np.zeros(50)
    degenerate = paired_singling_out_risk(zero.astype(bool), zero, n_boot=200, control_draws=4)
    assert degenerate["interval"].startswith("independent")
    assert degenerate["control_ci"] == pytest.approx(singling_out_risk(0, 50, 0, 50)["control_ci"])
    assert degenerate["control_ci"][1] > singling_out_risk(0, 50, 0, 200)["control_ci"][1]


def test_paired_singling_out_risk_degenerate_and_bad_input():
    zero = np.zeros(50, bool)
    out = paired_singling_out_risk(zero, zero, n_boot=200)
    ref = singling_out_risk(0, 50, 0, 50)
    assert out["interval"].startswith("independent") and out["risk_hi"] == ref["risk_hi"] > 0
    with pytest.raises(ValueError, match="same non-empty"):
        paired_singling_out_risk(zero, zero[:10])
    with pytest.raises(ValueError, match="booleans"):
        paired_singling_out_risk(np.full(5, 2), np.zeros(5))
    with pytest.raises(ValueError, match="n_boot"):
        paired_singling_out_risk(zero, zero, n_boot=10)
    with pytest.raises(ValueError, match="one label per image"):
        paired_singling_out_risk(zero, zero, groups=np.arange(3), n_boot=200)


def test_cohen_nissim_isolation_probability():
    n = np.array([1, 2, 10, 1000, 10 ** 6])
    w = np.array([0.5, 0.5, 0.1, 1e-3, 1e-6])
    np.testing.assert_allclose(cohen_nissim_isolation_probability(n, w), binom.pmf(1, n, w),
                               rtol=1e-10)
    assert cohen_nissim_isolation_probability(2, 0.5) == 0.5              # 2·½·½
    assert cohen_nissim_isolation_probability(10 ** 9, 1e-9) == pytest.approx(np.exp(-1), rel=1e-6)
    assert cohen_nissim_isolation_probability(5, 0.0) == 0.0
    assert cohen_nissim_isolation_probability(5, 1.0) == 0.0
    assert cohen_nissim_isolation_probability(1, 1.0) == 1.0
    grid = np.linspace(1e-5, 0.01, 2000)                                # max at w = 1/n
    assert grid[np.argmax(cohen_nissim_isolation_probability(500, grid))] == \
        pytest.approx(1 / 500, abs=1e-5)
    with pytest.raises(ValueError):
        cohen_nissim_isolation_probability(10, 1.5)


# --------------------------------------------------------------------------- IRS
def test_log_stirling2_known_values():
    np.testing.assert_allclose(np.exp(irs.log_stirling2(5)), [0, 1, 15, 25, 10, 1], atol=1e-9)
    assert np.exp(irs.log_stirling2(10)[3]) == pytest.approx(9330)
    assert np.exp(irs.log_stirling2(20, 5)[5]) == pytest.approx(749206090500)


@pytest.mark.parametrize("s,n", [(s, n) for s in range(1, 5) for n in range(1, 6)])
def test_occupancy_pmf_brute_force(s, n):
    counts = np.zeros(n + 1)
    for draw in itertools.product(range(s), repeat=n):
        counts[len(set(draw))] += 1
    brute = counts / s ** n
    got = np.exp(irs.occupancy_log_pmf(np.arange(n + 1), s, n))
    np.testing.assert_allclose(got, brute, atol=1e-12)


def test_occupancy_pmf_normalised_and_markov_chain():
    s, n = 50, 200
    pmf = np.exp(irs.occupancy_log_pmf(np.arange(n + 1), s, n))
    # k after each draw: +1 with probability (s - k)/s
    p = np.zeros(s + 1)
    p[0] = 1
    for _ in range(n):
        p = p * np.arange(s + 1) / s + np.concatenate([[0], p[:-1] * (s - np.arange(s)) / s])
    np.testing.assert_allclose(pmf[: s + 1], p, atol=1e-12)
    assert pmf.sum() == pytest.approx(1.0)


def test_occupancy_mle_is_argmax_of_exact_pmf():
    n, k = 30, 20
    s_grid = np.arange(k, 400)
    exact = [irs.occupancy_log_pmf(np.array([k]), s, n)[0] for s in s_grid]
    est = irs.occupancy_estimate(k, n, s_max=399, alpha_e=0.05)
    assert est["s_hat"] == s_grid[int(np.argmax(exact))]
    assert est["s_lo"] < est["s_hat"] < est["s_hi"] and not est["at_cap"]
    # bounds: equal 5 % tails of the exact P(k | s, n) normalised over s in [k, 399]
    post = np.exp(exact) / np.exp(exact).sum()
    below = {s: post[s_grid < s].sum() for s in s_grid}
    above = {s: post[s_grid > s].sum() for s in s_grid}
    assert below[est["s_lo"]] <= 0.05 < below[est["s_lo"] + 1]
    assert above[est["s_hi"]] <= 0.05 < above[est["s_hi"] - 1]


def test_occupancy_mle_recovers_s_and_bounds_cover():
    rng = np.random.default_rng(13)
    s_true, n, covered = 2000, 3000, 0
    for _ in range(20):
        k = np.unique(rng.integers(0, s_true, n)).size
        est = irs.occupancy_estimate(k, n, s_max=50_000)
        assert abs(est["s_hat"] - s_true) < 0.1 * s_true
        covered += est["s_lo"] <= s_true <= est["s_hi"]
    assert covered >= 15                                   # nominal 90 %
    assert irs.occupancy_estimate(100, 100, s_max=5000)["at_cap"]   # all distinct → cap
    assert irs.occupancy_estimate(1, 1, s_max=5000)["s_hat"] == 5000


@pytest.mark.parametrize("k,n", [(900, 3000), (2900, 3000), (50, 60), (10, 10_000)])
def test_occupancy_estimate_matches_dense_evaluation(k, n):
    """The windowed evaluation gives what every integer s in [k, s_max] gives."""
    s_max = 2_000_000
    s = np.arange(k, s_max + 1)
    ll = irs.occupancy_log_likelihood(k, n, s)
    post = np.exp(ll - ll.max())
    cdf = np.cumsum(post / post.sum())
    est = irs.occupancy_estimate(k, n, s_max=s_max, alpha_e=0.1)
    assert est["s_hat"] == s[np.argmax(ll)]
    assert est["s_lo"] == s[np.searchsorted(cdf, 0.1, side="right")]
    assert est["s_hi"] == s[np.searchsorted(cdf, 0.9, side="left")]


def test_nearest_neighbours_brute_force():
    rng = np.random.default_rng(14)
    q, x = rng.normal(size=(37, 5)), rng.normal(size=(53, 5))
    d_ref = cdist(q, x)
    d, i = nearest_neighbours(q, x, chunk=8, key_chunk=16)
    np.testing.assert_array_equal(i, d_ref.argmin(1))
    np.testing.assert_allclose(d, d_ref.min(1), rtol=1e-5)
    d3, i3 = nearest_neighbours(q, x, k=3, chunk=10, key_chunk=7, dtype=np.float64)
    np.testing.assert_array_equal(i3, np.argsort(d_ref, 1)[:, :3])
    np.testing.assert_allclose(d3, np.sort(d_ref, 1)[:, :3], rtol=1e-10)


def test_irs_of_training_set_itself():
    x = np.random.default_rng(15).normal(size=(500, 8))
    r = image_retrieval_score(x, x)
    assert r["k"] == 500 and r["n"] == 500 and r["irs_alpha"] == 1.0 and r["alpha"] == 1.0
    assert r["at_cap"]                                     # k = n: no finite MLE


def test_irs_recovers_half_coverage():
    """A 'generator' that memorised half the training items and draws them uniformly."""
    rng = np.random.default_rng(16)
    train = rng.normal(size=(2000, 8))
    learned = rng.choice(2000, 1000, replace=False)
    queries = train[rng.choice(learned, 2000)] + 1e-3 * rng.normal(size=(2000, 8))
    r = image_retrieval_score(queries, train)
    assert r["irs_alpha"] < 0.5
    assert r["irs_inf"] == pytest.approx(0.5, abs=0.05)
    assert r["irs_inf_lo"] <= r["irs_inf"] <= r["irs_inf_hi"]


def test_adjusted_irs_close_to_one_for_real_like_queries():
    rng = np.random.default_rng(17)
    centres = rng.normal(size=(50, 6)) * 3
    draw = lambda m: centres[rng.integers(0, 50, m)] + rng.normal(size=(m, 6))  # noqa: E731
    train = draw(3000)
    out = adjusted_irs(draw(3000), draw(3000), train)
    assert 0.85 < out["adjusted"] < 1.15
    assert out["adjusted_lo"] < 1 < out["adjusted_hi"]
    # a mode-collapsed generator (5 of 50 clusters) scores clearly lower
    collapsed = centres[rng.integers(0, 5, 3000)] + rng.normal(size=(3000, 6))
    assert adjusted_irs(collapsed, draw(3000), train)["adjusted"] < 0.5
