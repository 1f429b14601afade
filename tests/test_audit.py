"""Re-identification audit (privacy/audit.py): rates vs source and vs all training patients,
nearest-neighbour distances; plus one end-to-end check with a real (tiny) trained auditor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.privacy.audit import EmbeddingCache, nn_summary, pixel_nn_distances, rate, reid_audit, veto_tradeoff
from trichotomy_lib.privacy.controls import negative_control_release, positive_control_release

sys.path.insert(0, str(Path(__file__).parent))
from test_pso import OracleVerifier, make_population  # noqa: E402


@pytest.fixture(scope="module")
def world():
    train = make_population("tr", 40, 11)
    heldout = make_population("ho", 20, 12)
    return dict(train=train, heldout=heldout, auditor=OracleVerifier([train, heldout]))


def test_copies_are_reidentified_vs_source_and_vs_all(world):
    train, auditor = world["train"], world["auditor"]
    rel, src = positive_control_release(train, 0.05, seed=0)
    out = reid_audit(rel, src, train, auditor)
    assert out["src_rate"] == 1.0 and out["src_k"] == len(rel) == out["src_n"]
    assert out["all_rate"] == 1.0 and out["nearest_src_rate"] == 1.0 and out["all_src_rate"] == 1.0
    assert out["nearest_src_rate"] == 1.0
    assert 0 < out["src_lo"] < 1.0 == out["src_hi"]                     # Wilson interval, not [1, 1]


def test_other_patients_are_not_reidentified(world):
    train, auditor = world["train"], world["auditor"]
    rel, src = negative_control_release(world["heldout"])
    out = reid_audit(rel, src, train, auditor)
    assert out["all_rate"] == 0.0 and out["all_hi"] > 0
    assert np.isnan(out["src_rate"]) and np.isnan(out["nearest_src_rate"]) and out["src_n"] == 0
    # the same held-out images "released" with arbitrary training sources: still not the source
    fake_src = np.arange(len(rel)) % len(train)
    out = reid_audit(rel, fake_src, train, auditor)
    assert out["src_rate"] == 0.0 and out["all_rate"] == 0.0


def test_vs_all_threshold_is_calibrated_on_heldout_patients(world):
    # A verifier with a pairwise false-positive rate of ~2 %: at the pairwise threshold an
    # unseen patient is "re-identified" against the ~80 training images almost surely.
    train = world["train"]
    calib, unseen = make_population("ca", 150, 21), make_population("un", 150, 22)
    auditor = OracleVerifier([train, calib, unseen], bias=3.5)
    neg, _ = negative_control_release(unseen)
    naive = reid_audit(neg, None, train, auditor)
    assert naive["all_rate"] > 0.4 and np.isnan(naive["all_false_alarm"]) and naive["all_threshold"] == np.inf
    cal = reid_audit(neg, None, train, auditor, heldout=calib, false_alarm=0.05)
    assert cal["all_rate"] < 0.12 and cal["all_false_alarm"] == 0.05
    assert 0 < cal["all_threshold"] < np.inf                             # a distance in the embedding
    # the calibrated call still fires on (noised) copies of training images
    pos, src = positive_control_release(train, 0.05, seed=0)
    out = reid_audit(pos, src, train, auditor, heldout=calib, false_alarm=0.05)
    assert out["all_rate"] == 1.0 and out["all_src_rate"] == 1.0
    assert out["all_threshold"] == cal["all_threshold"]
    with pytest.raises(ValueError, match="false_alarm"):
        reid_audit(neg, None, train, auditor, heldout=calib, false_alarm=0.0)


def test_source_index_is_checked(world):
    train, auditor = world["train"], world["auditor"]
    rel, src = positive_control_release(train, 0.05, seed=0)
    with pytest.raises(ValueError, match="one entry per released image"):
        reid_audit(rel, src[:-1], train, auditor)
    with pytest.raises(ValueError, match="outside"):
        reid_audit(rel, src + len(train), train, auditor)
    with pytest.raises(ValueError, match="integer"):
        reid_audit(rel, src.astype(float), train, auditor)


def test_nn_distance_is_the_memorisation_signature(world):
    train = world["train"]
    rel, _ = positive_control_release(train, 0.05, seed=0)
    d_copy = pixel_nn_distances(rel, train)
    d_ref = pixel_nn_distances(world["heldout"], train)
    # copies: distance ≈ the noise norm σ·sqrt(H·W); unseen patients: far larger
    assert np.median(d_copy) == pytest.approx(0.05 * 16, rel=0.15)
    assert np.median(d_ref) > 5 * np.median(d_copy)
    s = nn_summary(d_copy, d_ref, quantile=0.05)
    assert s["nn_close_rate"] == 1.0 and s["nn_ratio"] < 0.2
    s = nn_summary(d_ref, d_ref, quantile=0.25)
    assert s["nn_close_rate"] == pytest.approx(0.25, abs=0.1) and s["nn_ratio"] == 1.0
    assert np.isnan(nn_summary(d_copy, None)["nn_close_rate"])
    # exact: an identical image has distance 0
    assert pixel_nn_distances(train.subset([3]), train)[0] == pytest.approx(0.0, abs=0.02)
    # large images are area-downsampled first: a 2x upsampled copy is still at distance ~0
    big = ImageSet(np.repeat(np.repeat(train.images, 2, 1), 2, 2), train.labels, train.patient_ids, train.names)
    assert pixel_nn_distances(big.subset([3]), big, max_size=16)[0] == pytest.approx(0.0, abs=0.02)


def test_rate_uses_wilson():
    out = rate([True] * 3 + [False] * 7, prefix="x_")
    assert out["x_rate"] == 0.3 and out["x_k"] == 3 and out["x_n"] == 10
    assert 0.1 < out["x_lo"] < 0.3 < out["x_hi"] < 0.61


def test_embedding_cache_embeds_once(world):
    calls = []

    class Counting:
        def embed(self, images, batch_size=256):
            calls.append(len(images))
            return world["auditor"].embed(images)

    cache = EmbeddingCache(Counting())
    a, b = cache(world["train"]), cache(world["train"])
    assert a is b and calls == [len(world["train"])]


def test_real_tiny_auditor_end_to_end():
    """A real auditor trained for a few epochs on a tiny PhantomCXR: the positive control
    (copies) must score a higher singling-out risk than held-out real patients."""
    from trichotomy_lib.data.build import build_dataset
    from trichotomy_lib.privacy.controls import control_population
    from trichotomy_lib.privacy.attack import evaluate_release
    from trichotomy_lib.privacy.reid_train import REID_DEFAULTS, train_verifier

    data_cfg = {"n_patients": 60, "image_size": 16, "max_scans": 4}
    splits = build_dataset(data_cfg, seed=3)
    params = {**REID_DEFAULTS, "width": 8, "stages": 2, "embed_dim": 32, "epochs": 2, "patience": None}
    auditor, _ = train_verifier(splits["train"], splits["val"], params, seed=1, progress=False)
    n = splits["train"].n_patients
    control = control_population(data_cfg, n, seed=3)
    weight = control_population(data_cfg, n, seed=3, stream="weight", prefix="wt")
    cfg = {"seed": 3, "privacy": {"n_attacks": 60, "predicates": ["ball"], "primary": "ball"}}
    rows = {}
    for name, (rel, src) in {"pos": positive_control_release(splits["train"], 0.02, seed=0),
                             "neg": negative_control_release(splits["test"])}.items():
        rows[name] = evaluate_release(rel, src, splits["train"], control, auditor, cfg, heldout=weight,
                                      reference=splits["test"], name=name)
    assert rows["pos"]["pso_risk"] > rows["neg"]["pso_risk"]
    assert rows["pos"]["pso_risk_lo"] > 0
    assert rows["neg"]["pso_risk_lo"] == 0.0
    assert rows["pos"]["nn_close_rate"] > 0.9 and rows["neg"]["nn_close_rate"] < 0.3


def test_veto_tradeoff_counts_the_auditors_residue_among_passed_candidates():
    defender = np.array([0.9, 0.6, 0.4, 0.2, 0.05, 0.01])
    auditor = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.1])
    rows = {r["threshold"]: r for r in veto_tradeoff(defender, auditor, [1.0, 0.5, 0.1])}
    assert rows[1.0]["pass_rate"] == 1.0 and rows[1.0]["reid_k"] == 4        # no veto: 4 of 6 linked
    assert rows[0.5]["n_pass"] == 4 and rows[0.5]["reid_k"] == 2            # 0.4 and 0.05 still linked
    assert rows[0.1]["n_pass"] == 2 and rows[0.1]["reid_rate"] == 0.5
    assert rows[0.5]["reid_lo"] < rows[0.5]["reid_rate"] < rows[0.5]["reid_hi"]
    with pytest.raises(ValueError, match="equal-length"):
        veto_tradeoff(defender, auditor[:-1], [0.5])
    with pytest.raises(ValueError, match="veto threshold"):
        veto_tradeoff(defender, auditor, [0.0])
