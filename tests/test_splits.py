"""Patient-disjoint splits and the data stage's entry point ``build_dataset``."""

import numpy as np
import pytest
from PIL import Image

from trichotomy_lib.data import (
    DEFAULT_DATA_CFG, DataError, ImageSet, build_dataset, generate_phantom, label_prevalence, split_patients,
)


@pytest.fixture(scope="module")
def ds():
    return generate_phantom(100, 32, seed=5)


def test_patient_disjoint_and_fractions(ds):
    sp = split_patients(ds)
    assert set(sp) == {"train", "val", "test"}
    pats = {k: set(v.patient_ids) for k, v in sp.items()}
    assert not pats["train"] & pats["val"] and not pats["train"] & pats["test"] and not pats["val"] & pats["test"]
    # All patients are somewhere (val/train lose only multi-label images, rarely a whole patient).
    assert len(pats["train"] | pats["val"] | pats["test"]) >= 0.95 * ds.n_patients
    assert len(pats["test"]) == 10 and 7 <= len(pats["val"]) <= 10 and len(pats["train"]) >= 75


def test_single_label_train_val_multi_label_test(ds):
    sp = split_patients(ds)
    for name in ("train", "val"):
        assert (sp[name].labels.sum(1) == 1).all(), name
    wide = split_patients(ds, fractions=(0.5, 0.1, 0.4))
    assert (wide["test"].labels.sum(1) > 1).any()  # test keeps multi-label images


def test_seed_and_fractions(ds):
    a, b = split_patients(ds, seed=42), split_patients(ds, seed=42)
    np.testing.assert_array_equal(a["test"].names, b["test"].names)
    c = split_patients(ds, seed=1)
    assert set(c["test"].patient_ids) != set(a["test"].patient_ids)
    d = split_patients(ds, fractions=(0.5, 0.2, 0.3))
    assert d["test"].n_patients == 30
    with pytest.raises(ValueError, match="fractions"):
        split_patients(ds, fractions=(0.8, 0.1, 0.2))


def test_empty_split_is_an_error():
    n = 20
    labels = np.zeros((n, 8), np.uint8)
    labels[:, [1, 2]] = 1  # every image multi-label: train/val have nothing to keep
    allmulti = ImageSet(np.zeros((n, 4, 4), np.uint8), labels, np.array([f"p{i}" for i in range(n)]),
                        np.array([f"n{i}" for i in range(n)]))
    with pytest.raises(DataError, match="split 'train' is empty"):
        split_patients(allmulti)
    two = allmulti.subset(np.arange(2))
    with pytest.raises(DataError, match="at least 3 patients"):
        split_patients(two)


def test_label_prevalence(ds):
    sp = split_patients(ds)
    df = label_prevalence(sp)
    assert list(df.index) == ["train", "val", "test"]
    assert df.loc["train", ("count", "images")] == len(sp["train"])
    assert df.loc["test", ("count", "Cardiomegaly")] == sp["test"].labels[:, 2].sum()
    assert df.loc["train", ("fraction", "No Finding")] == pytest.approx(sp["train"].labels[:, 0].mean())


def test_build_phantom():
    sp = build_dataset({"n_patients": 20, "image_size": 32, "seed": 3})
    assert set(sp) == {"train", "val", "test"} and sp["train"].image_size == 32
    again = build_dataset({"n_patients": 20, "image_size": 32}, seed=3)  # profile seed used
    np.testing.assert_array_equal(again["train"].images, sp["train"].images)
    assert set(DEFAULT_DATA_CFG) >= {"source", "n_patients", "image_size", "site", "split_fractions", "split_seed"}


def test_fresh_evaluation_patients():
    """val/test_patients: fresh patients of the same population; train unchanged, nobody shared."""
    base = build_dataset({"n_patients": 20, "image_size": 16, "seed": 3})
    big = build_dataset({"n_patients": 20, "image_size": 16, "seed": 3, "val_patients": 15, "test_patients": 40})
    np.testing.assert_array_equal(big["train"].images, base["train"].images)
    assert big["test"].n_patients == 40 and big["val"].n_patients <= 15
    assert (np.asarray(big["val"].labels).sum(1) <= 1).all()              # val single-label like train
    ids = {k: set(v.patient_ids.tolist()) for k, v in big.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    # the continuation of the dataset's own patient sequence: patient 20 onwards
    ref = generate_phantom(55, 16, seed=3)
    first_test = ref.subset(np.asarray(ref.patient_ids) == "a-p00035")
    row = np.flatnonzero(np.asarray(big["test"].patient_ids) == "a-p00035")
    np.testing.assert_array_equal(big["test"].images[row], first_test.images)
    only_test = build_dataset({"n_patients": 20, "image_size": 16, "seed": 3, "test_patients": 40})
    np.testing.assert_array_equal(only_test["val"].images, base["val"].images)


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"n_patient": 30}, "data.n_patient"),
        ({"n_patients": "30"}, "data.n_patients"),
        ({"n_patients": 2.5}, "data.n_patients"),
        ({"image_size": True}, "data.image_size"),
        ({"source": "web"}, "data.source"),
        ({"site": "z"}, "data.site"),
        ({"max_scans": 0}, "data.max_scans"),
        ({"split_fractions": [0.8, 0.2]}, "data.split_fractions"),
        ({"split_seed": None}, "data.split_seed"),
        ({"phantom": {"bogus": 1}}, "data.phantom.bogus"),
        ({"source": "filelist"}, "data.filelist"),
        ({"test_patients": 1}, "data.test_patients"),
        ({"val_patients": "many"}, "data.val_patients"),
        ({"source": "filelist", "filelist": "x.txt", "test_patients": 100}, "data.test_patients"),
    ],
)
def test_build_validates(cfg, field):
    with pytest.raises(DataError, match=field.replace(".", r"\.")):
        build_dataset(cfg, None)


def test_build_filelist(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for p in range(12):
        for s in range(2):
            rel = f"images/{p:08d}_{s:03d}.png"
            (tmp_path / "images").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / rel)
            lines.append(f"{rel} {' '.join('1' if j == (p % 8) else '0' for j in range(8))}")
    (tmp_path / "cxr.txt").write_text("\n".join(lines) + "\n")
    cfg = {"source": "filelist", "filelist": "cxr.txt", "image_size": 16}
    with pytest.raises(DataError, match="data_root"):
        build_dataset(cfg, None)
    sp = build_dataset(cfg, str(tmp_path))
    assert sum(len(v) for v in sp.values()) == 24 and sp["test"].images.shape[1:] == (16, 16)
