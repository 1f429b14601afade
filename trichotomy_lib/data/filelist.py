"""Real chest X-ray file lists (ChestX-ray14, CheXpert, MIMIC-CXR) → ImageSet, and back.

Two formats, chosen by the file suffix:

* text (any suffix but ``.csv``), the paper's: one image per line, ``<relpath> <8 labels 0/1>``,
  e.g. ``images/00000006_000.png 1 0 0 0 0 0 0 0``; blank lines and lines starting with ``#``
  are skipped. The patient id is parsed from the path (``patient_id_from_path``).
* CSV: a header ``path,patient_id,<the 8 LABELS>``; the patient id is given explicitly (an
  empty cell falls back to parsing the path).

Every problem is a ``DataError`` naming the file and the line. Writes are atomic.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .imageset import LABELS, N_LABELS, ImageSet

__all__ = ["DataError", "patient_id_from_path", "load_images", "read_filelist", "write_filelist"]


class DataError(ValueError):
    """Bad input data (file list, image file, config value); the message says where."""


# Patient id patterns, tried in order (first match wins):
_PATIENT_PATTERNS = (
    re.compile(r"(?:^|/)(p\d+)/s\d+/[^/]+$"),  # MIMIC-CXR: files/p10/p10000032/s500/x.jpg
    re.compile(r"(?:^|/)(patient\d+)/"),  # CheXpert: train/patient12345/study1/view1_frontal.jpg
    re.compile(r"(?:^|/)(\d{8})_\d{3}\.png$", re.IGNORECASE),  # ChestX-ray14: 00000006_000.png
    re.compile(r"(?:^|/)([a-z]+-p\d+)/s\d+(?:\.\w+)?$"),  # PhantomCXR names: a-p00012/s03(.png)
)


def patient_id_from_path(path: str) -> str:
    """The patient id encoded in an image path, for the datasets this project reads.

    ChestX-ray14 ``images/00000006_000.png`` → ``00000006``; CheXpert
    ``train/patient12345/study1/view1_frontal.jpg`` → ``patient12345``; MIMIC-CXR
    ``files/p10/p10000032/s50414267/x.jpg`` → ``p10000032``; PhantomCXR ``a-p00012/s03.png`` →
    ``a-p00012``. Raises ``ValueError`` when no pattern matches.
    """
    p = str(path).replace("\\", "/")
    for pattern in _PATIENT_PATTERNS:
        m = pattern.search(p)
        if m:
            return m.group(1)
    raise ValueError(
        f"cannot parse a patient id from {path!r} (expected ChestX-ray14 '<8 digits>_<3 digits>.png', "
        "CheXpert '.../patient<digits>/...', or MIMIC-CXR '.../p<digits>/s<digits>/<file>')"
    )


def _load_one(path: Path, image_size: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (image_size, image_size):
            # Downscaling: a box/area filter first (anti-aliasing), then Lanczos for the rest.
            im = im.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)


def load_images(paths, image_size: int, progress: bool = True, where=None) -> np.ndarray:
    """Load image files as grayscale uint8 (N, image_size, image_size).

    PNG/JPEG/any Pillow format; colour is converted to luminance, non-square images are
    squashed to a square (chest X-ray datasets are near square). ``where[i]`` (optional) is
    the ``"file:line"`` to blame in the error for ``paths[i]``.
    """
    paths = [Path(p) for p in paths]
    out = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    it = enumerate(paths)
    if progress and len(paths) > 200:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(paths), desc="loading images", unit="img")
    for i, path in it:
        at = f"{where[i]}: " if where is not None else ""
        if not path.is_file():
            raise DataError(f"{at}image file not found: {path}")
        try:
            out[i] = _load_one(path, image_size)
        except Exception as err:  # Pillow raises several types for corrupt/unknown files
            raise DataError(f"{at}cannot read image {path}: {err}") from err
    return out


def _parse_labels(values, where: str) -> np.ndarray:
    if len(values) != N_LABELS:
        raise DataError(f"{where}: expected {N_LABELS} labels ({', '.join(LABELS)}), got {len(values)}")
    bad = [v for v in values if v.strip() not in ("0", "1")]
    if bad:
        raise DataError(f"{where}: labels must be 0 or 1, got {bad[0]!r}")
    return np.array([int(v) for v in values], dtype=np.uint8)


def _read_rows(path: Path):
    """Yield (line number, relpath, patient id or None, labels) for every record."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        expected = ["path", "patient_id", *LABELS]
        if header is None or [h.strip() for h in header] != expected:
            raise DataError(f"{path}:1: CSV header must be {','.join(expected)}, got {header}")
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            where = f"{path}:{line}"
            if len(row) < 2:
                raise DataError(f"{where}: expected path, patient_id and {N_LABELS} labels, got {len(row)} fields")
            yield line, row[0].strip(), row[1].strip() or None, _parse_labels(row[2:], where)
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.split()
            yield line, parts[0], None, _parse_labels(parts[1:], f"{path}:{line}")


def read_filelist(path, data_root, image_size: int, progress: bool = True) -> ImageSet:
    """Read a file list and its images into an ImageSet (names = the relpaths).

    Args:
        path: the list (``.csv`` → CSV format, anything else → ``<relpath> <8 labels>`` lines).
        data_root: folder the relpaths are relative to.
        image_size: side of the loaded square images (e.g. 32..512).
    """
    path, data_root = Path(path), Path(data_root)
    if not path.is_file():
        raise DataError(f"file list not found: {path}")
    rels, pids, labels, where, seen = [], [], [], [], {}
    for line, rel, pid, lab in _read_rows(path):
        at = f"{path}:{line}"
        if rel in seen:
            raise DataError(f"{at}: duplicate path {rel!r} (first on line {seen[rel]})")
        seen[rel] = line
        if pid is None:
            try:
                pid = patient_id_from_path(rel)
            except ValueError as err:
                raise DataError(f"{at}: {err}") from None
        rels.append(rel)
        pids.append(pid)
        labels.append(lab)
        where.append(at)
    if not rels:
        raise DataError(f"{path}: the file list has no images")
    images = load_images([data_root / r for r in rels], image_size, progress=progress, where=where)
    return ImageSet(images=images, labels=np.stack(labels), patient_ids=np.array(pids), names=np.array(rels))


def write_filelist(imageset: ImageSet, path, fmt: str | None = None) -> None:
    """Write ``imageset``'s names and labels as a file list (the images are not written).

    ``fmt``: ``"csv"`` or ``"txt"``; default from the suffix (``.csv`` → CSV). The names must be
    the image relpaths. Atomic: written to a temp file in the same folder, then renamed.
    """
    path = Path(path)
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "txt")
    if fmt not in ("csv", "txt"):
        raise ValueError(f"fmt must be 'csv' or 'txt', got {fmt!r}")
    buf = io.StringIO()
    labels = np.asarray(imageset.labels)
    if fmt == "csv":
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "patient_id", *LABELS])
        for name, pid, lab in zip(imageset.names, imageset.patient_ids, labels):
            w.writerow([str(name), str(pid), *(int(x) for x in lab)])
    else:
        for name, lab in zip(imageset.names, labels):
            if any(c.isspace() for c in str(name)):
                raise DataError(f"{path}: path {name!r} contains whitespace; use the CSV format")
            buf.write(f"{name} {' '.join(str(int(x)) for x in lab)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
