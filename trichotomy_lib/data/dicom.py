"""DICOM chest radiographs → grayscale uint8 pixels (optional extra ``dicom``: pydicom).

Only the pixels leave this module. The display pipeline of DICOM PS3.3 C.11 is applied in
order, with pydicom's own implementations:

1. **Modality LUT** (``apply_modality_lut``): stored values → modality values (Rescale
   Slope/Intercept, or a Modality LUT Sequence).
2. **VOI LUT** (``apply_voi_lut``): the first VOI LUT Sequence item if present, else the first
   Window Center/Width pair (LINEAR, LINEAR_EXACT or SIGMOID, as the file says).
3. **Scaling to 0..255** over the VOI's output range: the window's ``[y_min, y_max]`` as
   pydicom defines it, or the min..max of the VOI LUT's entries. A file with no VOI at all
   is scaled by its own min..max (what viewers show by default for an unwindowed image).
4. **MONOCHROME1** (white = low values) is inverted so that 0 is black for every image, as
   in every PNG/JPEG chest X-ray dataset.

Pixel spacing is ignored (images are resized to a fixed side like every other format). No
header field is returned, logged or put in an error message: the patient id of a DICOM
image comes from its path (``filelist.patient_id_from_path``), never from the header,
so a release cannot carry a name, id, date or accession number from a DICOM file.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DICOM_SUFFIXES", "PYDICOM_MIN_VERSION", "require_pydicom", "is_dicom_path", "read_dicom"]

# Files read as DICOM, chosen by suffix (case-insensitive); everything else goes to Pillow.
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
PYDICOM_MIN_VERSION = (2, 4)


def is_dicom_path(path) -> bool:
    """True when ``path`` ends in one of ``DICOM_SUFFIXES``."""
    return str(path).lower().endswith(DICOM_SUFFIXES)


def require_pydicom(where: str = ""):
    """Import pydicom (>= 2.4) or raise an ImportError that names the optional extra.

    ``where`` (e.g. ``"list.txt:12"``) is put in front of the message to say which input
    needed it.
    """
    at = f"{where}: " if where else ""
    hint = ("reading DICOM (.dcm) images needs the optional extra 'dicom': "
            "pip install 'trichotomy[dicom]'  (or: pip install 'pydicom>=2.4')")
    try:
        import pydicom
    except ImportError as err:
        raise ImportError(f"{at}{hint}") from err
    try:
        version = tuple(int(x) for x in pydicom.__version__.split(".")[:2])
    except ValueError:  # a development build: trust it
        version = PYDICOM_MIN_VERSION
    if version < PYDICOM_MIN_VERSION:
        raise ImportError(f"{at}pydicom {pydicom.__version__} is too old; {hint}")
    return pydicom


def _lut_functions():
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.4
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _has_voi_lut(ds) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def _has_window(ds) -> bool:
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def read_dicom(path) -> np.ndarray:
    """Pixels of a single-frame monochrome DICOM file as (H, W) uint8, 0 = black.

    Native resolution (no resizing, pixel spacing ignored). Raises ``ImportError`` (naming the
    ``dicom`` extra) when pydicom is missing and ``ValueError`` for a file that is not a
    single-frame MONOCHROME1/MONOCHROME2 image; pydicom's own errors (not DICOM, a compressed
    transfer syntax without its decoder plugin) pass through with its message.
    """
    pydicom = require_pydicom()
    apply_modality_lut, apply_voi_lut = _lut_functions()
    ds = pydicom.dcmread(str(path))
    if "PixelData" not in ds:
        raise ValueError("DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"DICOM photometric interpretation must be MONOCHROME1 or MONOCHROME2 for a radiograph, "
            f"got {photometric or 'none'!r}")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames != 1 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(f"expected a single-frame, single-sample DICOM image, got {n_frames} frames")

    stored = ds.pixel_array
    if stored.ndim != 2:
        raise ValueError(f"expected a 2-D DICOM image, got pixel array of shape {stored.shape}")
    values = apply_modality_lut(stored, ds)
    if _has_voi_lut(ds) and np.issubdtype(values.dtype, np.floating):
        # A VOI LUT indexes by integer value; rescaled values of a LUT-bearing file are integral.
        values = np.rint(values).astype(np.int64)

    if _has_voi_lut(ds):
        # The LUT's own output range: the values its entries take (robust to a descriptor
        # whose nominal bit depth is larger than the data it holds).
        item = ds.VOILUTSequence[0]
        n_entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        table = np.asarray(apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds), np.float64)
        lo, hi = float(table.min()), float(table.max())
        out = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    elif _has_window(ds):
        # Windowing maps everything below/above the window to pydicom's y_min/y_max: probing
        # with two extreme values gives exactly that output range.
        with np.errstate(over="ignore"):
            probe = np.asarray(apply_voi_lut(np.array([-1e30, 1e30]), ds), dtype=np.float64)
        lo, hi = float(probe.min()), float(probe.max())
        out = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    else:
        out = np.asarray(values, dtype=np.float64)
        lo, hi = float(out.min()), float(out.max())

    if hi > lo:
        scaled = np.clip((out - lo) / (hi - lo), 0.0, 1.0) * 255.0
    else:  # a constant image (or a degenerate window): all black
        scaled = np.zeros_like(out)
    pixels = np.rint(scaled).astype(np.uint8)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels
