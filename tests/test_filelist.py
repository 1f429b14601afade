"""File lists: patient-id parsing, round trip with real PNG/JPEG files, every bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from trichotomy_lib.data import DataError, ImageSet, patient_id_from_path, read_filelist, write_filelist
from trichotomy_lib.data import filelist as fl


@pytest.mark.parametrize(
    "path, pid",
    [
        ("images/00000006_000.png", "00000006"),
        ("00030805_012.png", "00030805"),
        ("CheXpert-v1.0/train/patient12345/study1/view1_frontal.jpg", "patient12345"),
        ("files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg", "p10000032"),
        ("a-p00012/s03.png", "a-p00012"),
    ],
)
def test_patient_id_from_path(path, pid):
    assert patient_id_from_path(path) == pid


@pytest.mark.parametrize("path", ["images/scan.png", "files/p10/x.jpg", "0000006_000.png"])
def test_patient_id_unparseable(path):
    with pytest.raises(ValueError, match="cannot parse a patient id"):
        patient_id_from_path(path)


@pytest.fixture()
def root(tmp_path):
    """A data root with 4 PNGs (ChestX-ray14 names) and 2 JPEGs (CheXpert layout), 24 px."""
    rng = np.random.default_rng(0)
    rels = ["images/00000001_000.png", "images/00000001_001.png", "images/00000002_000.png",
            "images/00000003_000.png", "train/patient00007/study1/view1_frontal.jpg",
            "train/patient00007/study2/view1_frontal.jpg"]
    for k, rel in enumerate(rels):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (24, 24), dtype=np.uint8)
        if rel.endswith(".jpg"):
            Image.fromarray(np.stack([arr] * 3, -1)).save(p, quality=95)  # RGB JPEG → gray
        else:
            Image.fromarray(arr).save(p)
    labels = np.eye(8, dtype=np.uint8)[[0, 1, 2, 0, 5, 7]]
    labels[2, 5] = 1  # one multi-label row
    return tmp_path, rels, labels


def _write_txt(path, rels, labels):
    path.write_text("".join(f"{r} {' '.join(map(str, l))}\n" for r, l in zip(rels, labels)))


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
def test_round_trip(root, suffix):
    tmp, rels, labels = root
    src = tmp / "list.txt"
    _write_txt(src, rels, labels)
    ds = read_filelist(src, tmp, 24, progress=False)
    assert list(ds.names) == rels
    assert list(ds.patient_ids) == ["00000001", "00000001", "00000002", "00000003", "patient00007", "patient00007"]
    np.testing.assert_array_equal(ds.labels, labels)
    # PNGs at their own size load bit-exactly; JPEGs approximately.
    np.testing.assert_array_equal(ds.images[0], np.asarray(Image.open(tmp / rels[0])))
    jpg = np.asarray(Image.open(tmp / rels[4]).convert("L"), dtype=float)
    assert np.abs(ds.images[4] - jpg).mean() < 3
    out = tmp / f"again{suffix}"
    write_filelist(ds, out)
    back = read_filelist(out, tmp, 16, progress=False)
    assert back.images.shape == (6, 16, 16)
    np.testing.assert_array_equal(back.labels, ds.labels)
    np.testing.assert_array_equal(back.patient_ids, ds.patient_ids)
    np.testing.assert_array_equal(back.names, ds.names)


def test_csv_patient_id_column_wins(root):
    tmp, rels, labels = root
    ds = read_filelist(_txt(tmp, rels, labels), tmp, 24, progress=False)
    ds = ImageSet(ds.images, ds.labels, np.array([f"P{i}" for i in range(6)]), ds.names)
    write_filelist(ds, tmp / "l.csv")
    assert list(read_filelist(tmp / "l.csv", tmp, 24, progress=False).patient_ids) == [f"P{i}" for i in range(6)]


def _txt(tmp, rels, labels, extra=""):
    p = tmp / "list.txt"
    _write_txt(p, rels, labels)
    if extra:
        with open(p, "a") as f:
            f.write(extra)
    return p


def _bad(path, line, match):
    """read_filelist must raise a DataError naming the file and the line, plus ``match``."""
    with pytest.raises(DataError) as err:
        read_filelist(path, path.parent, 24, progress=False)
    msg = str(err.value)
    assert f"{path}:{line}:" in msg, msg
    assert match in msg, msg


def test_missing_image(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 0 0 0 0 0\n"), 7, "not found")


def test_unreadable_image(root):
    tmp, rels, labels = root
    (tmp / "images/00000009_000.png").write_bytes(b"this is not a png")
    _bad(_txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 0 0 0 0 0\n"), 7, "cannot read image")


def test_wrong_number_of_labels(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "# comment\nimages/00000009_000.png 1 0 0 0 0 0 0\n"), 8, "expected 8 labels")


def test_labels_not_binary(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 2 0 0 0 0\n"), 7, "0 or 1")
    _bad(_txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 -1 0 0 0 0\n"), 7, "0 or 1")


def test_unparseable_patient(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "images/scan.png 1 0 0 0 0 0 0 0\n"), 7, "patient id")


def test_duplicate_path(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, f"\n{rels[1]} 1 0 0 0 0 0 0 0\n"), 8, "duplicate path")


def test_csv_errors(root):
    tmp, rels, labels = root
    p = tmp / "bad.csv"
    p.write_text("path,patient,x\n")
    _bad(p, 1, "header")
    header = "path,patient_id," + ",".join(fl.LABELS) + "\n"
    p.write_text(header + f"{rels[0]},,1,0,0,0,0,0,0,0\n{rels[1]},,1,0,0,0,0,0,0\n")
    _bad(p, 3, "expected 8 labels")
    p.write_text(header + f"{rels[0]},,1,0,0,0,0,0,0,0\nimages/x.png,,1,0,0,0,0,0,0,0\n")
    _bad(p, 3, "patient id")


def test_missing_list(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_filelist(tmp_path / "nope.txt", tmp_path, 24)


def _tiny():
    return ImageSet(np.zeros((2, 4, 4), np.uint8), np.eye(8, dtype=np.uint8)[:2],
                    np.array(["00000001", "00000002"]), np.array(["images/00000001_000.png", "images/00000002_000.png"]))


def test_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "list.txt"
    target.write_text("old content\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fl.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_filelist(_tiny(), target)
    assert target.read_text() == "old content\n"  # untouched
    assert sorted(os.listdir(tmp_path)) == ["list.txt"]  # no temp file left behind


def test_write_rejects_whitespace_paths(tmp_path):
    ds = _tiny()
    ds = ImageSet(ds.images, ds.labels, ds.patient_ids, np.array(["a b.png", "c.png"]))
    with pytest.raises(DataError, match="whitespace"):
        write_filelist(ds, tmp_path / "l.txt")
    assert not os.listdir(tmp_path)
    write_filelist(ds, tmp_path / "l.csv")  # CSV quotes it fine
    assert "a b.png" in (tmp_path / "l.csv").read_text()
