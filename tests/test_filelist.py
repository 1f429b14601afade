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


# ------------------------------------------------------------------ hardening: encoding, paths, labels, sizes
def test_utf8_bom_is_stripped(root):
    tmp, rels, labels = root
    p = _txt(tmp, rels, labels)
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    ds = read_filelist(p, tmp, 24, progress=False)
    assert list(ds.names) == rels  # no "\ufeffimages/…"
    header = "path,patient_id," + ",".join(fl.LABELS) + "\n"
    c = tmp / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbf" + (header + f"{rels[0]},,1,0,0,0,0,0,0,0\n").encode())
    assert list(read_filelist(c, tmp, 24, progress=False).names) == [rels[0]]


def test_non_utf8_byte_names_line_and_offset(root):
    tmp, rels, labels = root
    p = _txt(tmp, rels[:2], labels[:2])
    good = p.read_bytes()
    p.write_bytes(good + b"# caf\xe9\n")
    with pytest.raises(DataError) as err:
        read_filelist(p, tmp, 24, progress=False)
    msg = str(err.value)
    assert f"{p}:3:" in msg and "not valid UTF-8" in msg and "0xe9" in msg
    assert f"byte offset {len(good) + 5}" in msg and "byte 5 of the line" in msg
    # The offset counts the BOM too; the line does not change.
    p.write_bytes(b"\xef\xbb\xbf" + good + b"# caf\xe9\n")
    with pytest.raises(DataError, match=rf"{p}:3:.*byte offset {len(good) + 8}"):
        read_filelist(p, tmp, 24, progress=False)


def test_utf16_list_refused(root):
    tmp, rels, _ = root
    p = tmp / "list.txt"
    p.write_bytes(f"{rels[0]} 1 0 0 0 0 0 0 0\n".encode("utf-16"))
    _bad(p, 1, "UTF-16")


@pytest.mark.parametrize("rel", ["/etc/00000009_000.png", "C:\\data\\00000009_000.png", "\\\\server\\00000009_000.png"])
def test_absolute_path_refused(root, rel):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, f"{rel} 1 0 0 0 0 0 0 0\n"), 7, "absolute image path")


@pytest.mark.parametrize("rel", ["../../images/00000009_000.png", "images/../../00000009_000.png", "..\\x\\00000009_000.png"])
def test_path_escaping_root_refused(tmp_path, rel):
    inner = tmp_path / "root"
    (inner / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(tmp_path / "00000009_000.png")  # exists, outside the root
    p = inner / "list.txt"
    p.write_text(f"images/00000008_000.png 1 0 0 0 0 0 0 0\n{rel} 1 0 0 0 0 0 0 0\n")
    with pytest.raises(DataError) as err:
        read_filelist(p, inner, 24, progress=False)
    assert f"{p}:2:" in str(err.value) and "outside the data root" in str(err.value)


def test_dot_segments_inside_root_are_the_same_file(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "images/./00000001_000.png 1 0 0 0 0 0 0 0\n"), 7, "duplicate path")
    ds = read_filelist(_txt(tmp, rels[:1], labels[:1], "train/../images/00000002_000.png 0 1 0 0 0 0 0 0\n"),
                       tmp, 24, progress=False)
    np.testing.assert_array_equal(ds.images[1], np.asarray(Image.open(tmp / rels[2])))


def test_rows_without_findings_dropped_and_counted(root):
    tmp, rels, labels = root
    labels = labels.copy()
    labels[[1, 3]] = 0
    p = _txt(tmp, rels, labels)
    info = {}
    ds = read_filelist(p, tmp, 24, progress=False, info=info)
    assert list(ds.names) == [r for k, r in enumerate(rels) if k not in (1, 3)]
    assert info["rows"] == 6 and info["dropped_no_label"] == 2 and info["images"] == 4
    kept = read_filelist(p, tmp, 24, progress=False, drop_unlabelled=False)
    assert len(kept) == 6
    none = tmp / "none.txt"
    _write_txt(none, rels[:2], np.zeros((2, 8), np.uint8))
    with pytest.raises(DataError, match=r"none of the 2 rows has any of the 8 findings"):
        read_filelist(none, tmp, 24, progress=False)


def test_build_reports_dropped_rows(root, capsys):
    from trichotomy_lib.data import build_dataset

    tmp, _, _ = root
    lines = []
    for p in range(12):
        rel = f"images/{p:08d}_000.png"
        Image.fromarray(np.full((20, 20), 10 * p, np.uint8)).save(tmp / rel)
        lab = ["0"] * 8
        if p % 4:  # every 4th patient has none of the findings
            lab[p % 8] = "1"
        lines.append(f"{rel} {' '.join(lab)}")
    (tmp / "cxr.txt").write_text("\n".join(lines) + "\n")
    info = {}
    splits = build_dataset({"source": "filelist", "filelist": "cxr.txt", "image_size": 16}, tmp, info=info)
    assert info["dropped_no_label"] == 3 and info["images"] == 9 and sum(info["splits"].values()) == 9
    assert "3 dropped with none of the 8 findings" in capsys.readouterr().out
    assert sum(len(s) for s in splits.values()) == 9
    # The splits are memory maps of the cache, identical to splitting the in-memory set.
    from trichotomy_lib.data import split_patients

    plain = split_patients(read_filelist(tmp / "cxr.txt", tmp, 16, progress=False, cache=False))
    for name, part in splits.items():
        assert isinstance(part.images, np.memmap)
        np.testing.assert_array_equal(part.images, plain[name].images)
        np.testing.assert_array_equal(part.names, plain[name].names)
        np.testing.assert_array_equal(part.labels, plain[name].labels)


@pytest.mark.parametrize("shape", [(1, 1), (11, 24), (24, 11)])
def test_tiny_image_refused(root, shape):
    tmp, rels, labels = root
    Image.fromarray(np.zeros(shape, np.uint8)).save(tmp / "images/00000009_000.png")
    p = _txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 0 0 0 0 0\n")
    _bad(p, 7, "below the minimum 12 px")  # image_size 24 → at most 2x upscaling
    assert len(read_filelist(p, tmp, 24, progress=False, min_side=1)) == 7


def test_image_at_minimum_side_accepted(root):
    tmp, rels, labels = root
    Image.fromarray(np.zeros((12, 30), np.uint8)).save(tmp / "images/00000009_000.png")
    ds = read_filelist(_txt(tmp, rels, labels, "images/00000009_000.png 1 0 0 0 0 0 0 0\n"), tmp, 24, progress=False)
    assert ds.images.shape == (7, 24, 24)


def test_sixteen_bit_png_is_scaled_not_clipped(root):
    tmp, rels, labels = root
    a = np.tile(np.array([0, 257 * 64, 257 * 128, 65535], np.uint16).repeat(6), (24, 1))
    Image.fromarray(a).save(tmp / "images/00000009_000.png")
    ds = read_filelist(_txt(tmp, rels[:1], labels[:1], "images/00000009_000.png 1 0 0 0 0 0 0 0\n"), tmp, 24,
                       progress=False)
    np.testing.assert_array_equal(ds.images[1][0, ::6], [0, 64, 128, 255])


def test_whitespace_in_text_path_hints_at_csv(root):
    tmp, rels, labels = root
    _bad(_txt(tmp, rels, labels, "images/my scan.png 1 0 0 0 0 0 0 0\n"), 7, "CSV format")


def test_empty_csv_path_refused(root):
    tmp = root[0]
    p = tmp / "l.csv"
    p.write_text("path,patient_id," + ",".join(fl.LABELS) + "\n,P1,1,0,0,0,0,0,0,0\n")
    _bad(p, 2, "empty image path")


def test_cache_location(root, tmp_path_factory):
    tmp, rels, labels = root
    p = _txt(tmp, rels, labels)
    info = {}
    ds = read_filelist(p, tmp, 24, progress=False, info=info)  # default: <data_root>/.trichotomy_cache
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert info["cache"].startswith(str(tmp / ".trichotomy_cache"))
    elsewhere = tmp_path_factory.mktemp("run")
    info2 = {}
    again = read_filelist(p, tmp, 24, progress=False, cache_dir=elsewhere, info=info2)
    assert info2["cache"].startswith(str(elsewhere)) and not info2["cache_hit"]
    np.testing.assert_array_equal(again.images, ds.images)
    mem = read_filelist(p, tmp, 24, progress=False, cache=False, info=(info3 := {}))
    assert not isinstance(mem.images, np.memmap) and info3["cache"] is None
    np.testing.assert_array_equal(mem.images, ds.images)


def test_unwritable_default_cache_falls_back_to_memory(root, monkeypatch):
    tmp, rels, labels = root
    monkeypatch.setattr(fl, "_default_cache_dir", lambda data_root: None)
    with pytest.warns(UserWarning, match="cannot write the image cache"):
        ds = read_filelist(_txt(tmp, rels, labels), tmp, 24, progress=False)
    assert not isinstance(ds.images, np.memmap)
    assert not (tmp / ".trichotomy_cache").exists()
