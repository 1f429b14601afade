"""Fidelity/diversity: feature extraction and FD / IRS on constructed cases."""

import numpy as np
import pytest
import torch

from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.evaluation.classifier import Classifier
from trichotomy_lib.evaluation.classifier_nets import build_net
from trichotomy_lib.evaluation.fidelity import fidelity_row, penultimate_features


def tiny_classifier(width=4, depth=2, size=16) -> Classifier:
    torch.manual_seed(0)
    hp = {"arch": "cnn", "width": width, "depth": depth, "image_shape": [size, size], "labels": [], "eval_batch_size": 7}
    return Classifier(build_net(hp).eval(), hp)


def imageset(n=20, size=16, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 255, (n, size, size), dtype=np.uint8), np.zeros((n, 8), np.uint8),
                    np.array([f"p{i}" for i in range(n)]), np.array([f"p{i}/s0" for i in range(n)]))


def test_penultimate_features_shape_determinism_and_head():
    clf, images = tiny_classifier(), imageset()
    f = penultimate_features(clf, images)              # batch 7: three batches, concatenated in order
    assert f.shape == (20, 8) and f.dtype == np.float32  # width 4 · 2^(depth−1)
    np.testing.assert_array_equal(f, penultimate_features(clf, images, batch_size=20))
    # they are the head's input: head(features) reproduces the logits
    logits = clf.net.head(torch.from_numpy(f)).detach().numpy()
    np.testing.assert_allclose(logits, clf.predict_logits(images), rtol=1e-4, atol=1e-5)
    assert len(clf.net.head._forward_pre_hooks) == 0  # hook removed
    with pytest.raises(TypeError, match="ImageSet"):
        penultimate_features(clf, images.tensor())


def test_fidelity_identical_sets_and_collapse():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 6)), rng.normal(size=(40, 6))
    same = fidelity_row(train, train, test, equal_n=False)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6)   # identical sets: FD 0
    assert same["k"] == 300 and same["irs_alpha"] == 1.0  # train vs itself: every item its own NN
    assert same["at_cap"]                                 # k = n: "at least this diverse"
    assert same["fd_test"] > 0
    collapsed = fidelity_row(np.repeat(train[:5], 60, axis=0) + 1e-3 * rng.normal(size=(300, 6)), train, test,
                             equal_n=False)
    assert collapsed["k"] == 5 and collapsed["irs_alpha"] == pytest.approx(5 / 300)
    assert collapsed["irs_inf"] < 0.05 and collapsed["irs_adjusted"] < 0.1
    assert collapsed["fd"] > same["fd_test"]           # far from the data, further than real held-out images
    fresh = fidelity_row(rng.normal(size=(300, 6)), train, test, equal_n=False)  # a "perfect generator"
    assert fresh["irs_adjusted_lo"] < 3 and fresh["irs_adjusted_hi"] > 0.3
    assert fresh["irs_adjusted"] > 10 * collapsed["irs_adjusted"]
    with pytest.raises(ValueError, match="dimensions differ"):
        fidelity_row(train[:, :5], train, test)
    with pytest.raises(ValueError, match="synth_feats"):
        fidelity_row(np.full((3, 6), np.nan), train, test)


def test_fidelity_equal_n_removes_the_size_bias():
    """A perfect generator (fresh draws) with a large release looks better than real data when
    compared with a small reference; at equal n the two carry the same bias."""
    rng = np.random.default_rng(1)
    d = 16
    train, test = rng.normal(size=(400, d)), rng.normal(size=(60, d))
    fds = {True: [], False: []}
    for rep in range(8):
        release = rng.normal(size=(1200, d))
        for eq in (True, False):
            r = fidelity_row(release, train, test, equal_n=eq, seed=rep)
            fds[eq].append((r["fd"], r["fd_test"]))
            assert r["n_release"] == 1200 and r["n"] == (60 if eq else 1200) and r["n_reference"] == 60
    whole = np.mean(fds[False], axis=0)
    equal = np.mean(fds[True], axis=0)
    assert whole[0] < 0.5 * whole[1]                  # size bias: the big release "beats" its floor
    assert 0.6 < equal[0] / equal[1] < 1.6            # same n: release and floor alike
    small = fidelity_row(rng.normal(size=(30, d)), train, test, seed=0)   # release smaller: reference cut
    assert small["n"] == small["n_reference"] == 30
