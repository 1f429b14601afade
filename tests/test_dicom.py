"""DICOM input: windowing, MONOCHROME1, no header field in any output, the missing-extra error."""

import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from trichotomy_lib.data import DataError, ImageSet, read_filelist
from trichotomy_lib.data.dicom import read_dicom, require_pydicom

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SECRETS = ("Secret^Patient", "SECRET-ID-4711", "ACC-0815", "19450101")


def _stored(h=40, w=48):
    """12-bit stored values: a ramp over columns, 0..4095."""
    return np.tile(np.linspace(0, 4095, w).round().astype(np.uint16), (h, 1))


def write_dicom(path, stored, photometric="MONOCHROME2", center=None, width=None, slope=None, intercept=None,
                voi_lut=None, rgb=False):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    # Identifying header fields that must never reach any output.
    ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = SECRETS
    ds.PixelSpacing = [0.139, 0.139]
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if rgb:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, 12])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUT Data
        ds.VOILUTSequence = [item]
    ds.PixelData = (stored.astype(np.uint8) if rgb else stored.astype("<u2")).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)
    return path


def linear_window(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) on [0, 1], then to 0..255."""
    x = np.asarray(x, dtype=np.float64)
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.rint(y * 255).astype(np.uint8)


def test_monochrome2_window(tmp_path):
    stored = _stored()
    out = read_dicom(write_dicom(tmp_path / "a.dcm", stored, center=2000, width=1000))
    assert out.dtype == np.uint8 and out.shape == stored.shape
    assert np.abs(out.astype(int) - linear_window(stored, 2000, 1000)).max() <= 1
    assert out[0, 0] == 0 and out[0, -1] == 255  # clipped below / above the window


def test_monochrome1_is_inverted(tmp_path):
    stored = _stored()
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", stored, center=2000, width=1000))
    m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", center=2000, width=1000))
    np.testing.assert_array_equal(m1, 255 - m2)
    assert m1[0, 0] == 255  # low stored values are white in MONOCHROME1


def test_modality_rescale_then_window(tmp_path):
    stored = _stored()
    # Modality values = 2 * stored - 1000; the window is given in modality units.
    out = read_dicom(write_dicom(tmp_path / "r.dcm", stored, center=3000, width=2000, slope=2, intercept=-1000))
    assert np.abs(out.astype(int) - linear_window(2.0 * stored - 1000, 3000, 2000)).max() <= 1


def test_no_window_uses_full_range_and_voi_lut(tmp_path):
    stored = _stored()
    stored[:, :4] = 1000  # min 1000 .. max 4095
    out = read_dicom(write_dicom(tmp_path / "n.dcm", stored))
    assert out.min() == 0 and out.max() == 255
    lut = np.clip(np.arange(4096) - 1000, 0, 2047)  # a VOI LUT: identity from 1000, saturating at 3047
    out = read_dicom(write_dicom(tmp_path / "l.dcm", _stored(), voi_lut=lut, center=100, width=10))  # LUT wins
    expected = np.rint(lut[_stored()] / 2047 * 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_non_monochrome_refused(tmp_path):
    p = write_dicom(tmp_path / "c.dcm", np.zeros((8, 8, 3), np.uint8), rgb=True)
    with pytest.raises(ValueError, match="MONOCHROME"):
        read_dicom(p)


def _dicom_root(tmp_path):
    """MIMIC-style and CheXpert-style DICOM paths; the patient ids come from them."""
    rels = ["files/p10/p10000032/s50414267/a.dcm", "files/p10/p10000032/s50414268/b.dcm",
            "train/patient00007/study1/view1_frontal.dcm"]
    for k, rel in enumerate(rels):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_dicom(tmp_path / rel, _stored(), "MONOCHROME1" if k == 1 else "MONOCHROME2", center=2000, width=1000)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{r} {' '.join('1' if j == k else '0' for j in range(8))}\n" for k, r in enumerate(rels)))
    return lst, rels


def test_filelist_with_dicom_no_header_reaches_output(tmp_path):
    lst, rels = _dicom_root(tmp_path)
    run = tmp_path / "run"
    ds = read_filelist(lst, tmp_path, 32, progress=False, cache_dir=run)
    assert ds.images.shape == (3, 32, 32)  # pixel spacing ignored: a fixed side
    assert list(ds.patient_ids) == ["p10000032", "p10000032", "patient00007"]
    assert list(ds.names) == rels
    assert ds.images[0, 16, 0] < 10 and ds.images[1, 16, 0] > 245  # MONOCHROME1 inverted
    ImageSet(np.array(ds.images), ds.labels, ds.patient_ids, ds.names).save(tmp_path / "saved")
    written = b"".join(p.read_bytes() for d in (run, tmp_path / "saved") for p in d.iterdir() if p.is_file())
    for secret in SECRETS:
        assert secret.encode() not in written
        assert secret not in repr(ds)


def test_unreadable_dicom_names_file_and_line(tmp_path):
    lst, rels = _dicom_root(tmp_path)
    (tmp_path / rels[2]).write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=rf"{lst}:3: cannot read image"):
        read_filelist(lst, tmp_path, 32, progress=False, cache=False)


def test_missing_pydicom_names_the_extra(tmp_path, monkeypatch):
    lst, _ = _dicom_root(tmp_path)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom → ImportError
    with pytest.raises(ImportError, match=r"trichotomy\[dicom\]") as err:
        read_filelist(lst, tmp_path, 32, progress=False, cache=False)
    assert f"{lst}:1" in str(err.value)
    with pytest.raises(ImportError, match="optional extra 'dicom'"):
        require_pydicom()
