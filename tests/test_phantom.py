"""PhantomCXR: determinism, labels, persistence, sites, and that identity hides from pixels."""

import numpy as np
import pytest

from trichotomy_lib.data import LABELS, ImageSet, generate_phantom, scans_per_patient
from trichotomy_lib.evaluation.retrieval import precision_at_1


def pixel_nn_precision_at_1(images: ImageSet) -> float:
    return precision_at_1(images.images.reshape(len(images), -1), images.patient_ids)["value"]
from trichotomy_lib.data.phantom import PHANTOM_DEFAULTS

CARDIO = LABELS.index("Cardiomegaly")


@pytest.fixture(scope="module")
def big():
    return generate_phantom(120, 32, seed=11, site="a")


def test_shapes_and_names():
    ds = generate_phantom(4, 64, seed=0, site="a")
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (64, 64)
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (len(ds), 8)
    assert all(n.startswith(p + "/s") for n, p in zip(ds.names, ds.patient_ids))
    assert set(ds.patient_ids) <= {f"a-p{i:05d}" for i in range(4)}
    assert len(set(ds.names)) == len(ds)
    assert ds.images.std() > 20  # not blank


def test_same_seed_bit_identical_and_seed_matters():
    a, b = generate_phantom(6, 32, seed=3), generate_phantom(6, 32, seed=3)
    for f in ("images", "labels", "patient_ids", "names"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    c = generate_phantom(6, 32, seed=4)
    assert len(c) != len(a) or not np.array_equal(c.images, a.images)


def test_patient_independent_of_n_patients():
    small = generate_phantom(3, 32, seed=7)
    large = generate_phantom(9, 32, seed=7)
    keep = np.isin(large.patient_ids, small.patient_ids)
    np.testing.assert_array_equal(large.images[keep], small.images)
    np.testing.assert_array_equal(large.labels[keep], small.labels)
    shifted = generate_phantom(4, 32, seed=7, first_patient=5)
    keep = np.isin(large.patient_ids, shifted.patient_ids)
    np.testing.assert_array_equal(large.images[keep], shifted.images)


def test_labels_valid_and_no_finding_exclusive(big):
    assert set(np.unique(big.labels)) <= {0, 1}
    np.testing.assert_array_equal(big.labels[:, 0], (big.labels[:, 1:].sum(1) == 0).astype(np.uint8))


def test_prevalence_as_designed(big):
    prev = big.labels.mean(0)
    assert 0.40 < prev[0] < 0.65, prev  # No Finding the majority class
    for j, name in enumerate(LABELS[1:], start=1):
        assert 0.03 < prev[j] < 0.22, (name, prev[j])
    n_pos = big.labels[:, 1:].sum(1)
    assert 0.04 < (n_pos >= 2).mean() < 0.30  # multi-label images exist but are a minority
    assert (n_pos == 1).sum() > (n_pos >= 2).sum()


def test_chronic_persists_acute_varies(big):
    varying = 0
    for pid in np.unique(big.patient_ids):
        lab = big.labels[big.patient_ids == pid]
        assert len(np.unique(lab[:, CARDIO])) == 1, pid  # cardiomegaly is chronic
        varying += int(len(lab) > 1 and (lab[:, [1, 3, 4, 5, 6, 7]].std(0) > 0).any())
    assert varying > 10  # acute findings come and go


def test_scans_per_patient_skewed(big):
    counts = scans_per_patient(big)
    assert counts.min() >= 1 and counts.max() <= 8
    hist = np.bincount(counts, minlength=9)[1:]
    assert hist[0] == hist.max() and hist[0] < 0.6 * len(counts)
    assert scans_per_patient(generate_phantom(30, 32, seed=1, max_scans=2)).max() <= 2


def test_sites_differ():
    a = generate_phantom(40, 32, seed=2, site="a")
    b = generate_phantom(40, 32, seed=2, site="b")
    assert not set(a.patient_ids) & set(b.patient_ids)
    assert all(p.startswith("b-p") for p in b.patient_ids)
    # Site a burns an 'L' into the top-left corner, site b a box into the top-right.
    tl = lambda ds: ds.images[:, 1:7, 1:7].mean()  # noqa: E731
    tr = lambda ds: ds.images[:, 1:7, -7:-1].mean()  # noqa: E731
    assert tl(a) - tr(a) > 25 and tr(b) - tl(b) > 15
    # Site b: brighter (gamma < 1, bright collimation), less contrast.
    assert b.images.mean() - a.images.mean() > 10 and a.images.std() - b.images.std() > 5


def test_identity_hidden_from_raw_pixels(big):
    assert pixel_nn_precision_at_1(big) < 0.3


def test_pixel_nn_detects_duplicates(big):
    # A release that copies images must score high: the metric can fail.
    dup = ImageSet(
        images=np.concatenate([big.images[:50], big.images[:50]]),
        labels=np.concatenate([big.labels[:50], big.labels[:50]]),
        patient_ids=np.concatenate([[f"x{i}" for i in range(50)]] * 2),
        names=np.array([f"n{i}" for i in range(100)]),
    )
    assert pixel_nn_precision_at_1(dup) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="site"):
        generate_phantom(2, site="zz")
    with pytest.raises(ValueError, match="n_patients"):
        generate_phantom(0)
    with pytest.raises(ValueError, match="max_scans"):
        generate_phantom(2, max_scans=9)
    with pytest.raises(ValueError, match="nonsense"):
        generate_phantom(2, params={"nonsense": 1})
    assert "abnormal_rate" in PHANTOM_DEFAULTS


def test_identical_across_processes_with_different_hash_seeds():
    """Set iteration order changes with PYTHONHASHSEED; the phantom must not depend on it."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from trichotomy_lib.data import generate_phantom; "
        "s = generate_phantom(40, image_size=16, seed=3); "
        "print(hashlib.sha256(s.images.tobytes() + s.labels.tobytes()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_variants_render_the_datasets_patients_new_scans_and_swapped_acquisitions():
    from trichotomy_lib.data.phantom import variants

    ds = generate_phantom(6, image_size=32, seed=9, site="a", max_scans=4)
    r = variants._Renderer(32, "a", None, None)
    # the renderer draws exactly what generate_phantom drew: scan k of patient i, re-rendered alone
    for i in range(3):
        patient, findings, seed_seq = r.patient(9, "a", i, 4)
        k = len(findings) - 1
        scan_rng = np.random.default_rng(seed_seq.spawn(len(findings))[k])
        from trichotomy_lib.data.phantom.params import sample_scan

        image = r.render(patient, [sample_scan(scan_rng, r.cfg, r.site_cfg)], [findings[k]], [scan_rng])[0]
        assert np.array_equal(image, ds.images[list(ds.names).index(f"a-p{i:05d}/s{k:02d}")])
    assert variants.patient_index("a-p00012") == 12 and variants.patient_index("ctrl:a-p00003") == 3
    fresh = variants.new_scans([0, 1], seed=9, max_scans=4)
    assert fresh.shape == (2, 32, 32) and fresh.dtype == np.uint8
    assert not any(np.array_equal(fresh[0], im) for im in ds.images)   # a new image of patient 0
    swap = variants.acquisition_swap([(0, 0)], [1], seed=9, max_scans=4)
    assert swap.shape == (1, 32, 32) and not any(np.array_equal(swap[0], im) for im in ds.images)
    with pytest.raises(ValueError, match="own patient"):
        variants.acquisition_swap([(0, 0)], [0], seed=9, max_scans=4)
