"""Real chest X-ray file lists (ChestX-ray14, CheXpert, MIMIC-CXR) → ImageSet, and back.

Two formats, chosen by the file suffix:

* text (any suffix but ``.csv``), the paper's: one image per line, ``<relpath> <8 labels 0/1>``,
  e.g. ``images/00000006_000.png 1 0 0 0 0 0 0 0``; blank lines and lines starting with ``#``
  are skipped. The patient id is parsed from the path (``patient_id_from_path``).
* CSV: a header ``path,patient_id,<the 8 LABELS>``; the patient id is given explicitly (an
  empty cell falls back to parsing the path).

Both are UTF-8 (a leading byte-order mark is accepted and ignored). Relpaths must stay
inside the data root: absolute paths and paths whose ``..`` steps leave the root are
refused (checked on the path text; symlinks the data holder placed inside the root are
followed). Rows with none of the 8 findings are dropped and counted, as in the paper.
Images may be PNG/JPEG/any Pillow format or DICOM (``.dcm``, optional extra ``dicom``).

Every problem is a ``DataError`` naming the file and the line. Writes are atomic.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import posixpath
import re
import warnings
from pathlib import Path, PureWindowsPath

import numpy as np

from ..io import atomic_write_text
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


def _require_dicom_support(rels, where) -> None:
    """ImportError naming the ``dicom`` extra, at the first DICOM path, when pydicom is missing."""
    from .dicom import is_dicom_path, require_pydicom

    for rel, at in zip(rels, where if where is not None else [""] * len(rels)):
        if is_dicom_path(rel):
            require_pydicom(at)
            return


def load_images(paths, image_size: int, progress: bool = True, where=None, *, min_side: int | None = None,
                workers: int | None = None, backend: str = "thread") -> np.ndarray:
    """Load image files as grayscale uint8 (N, image_size, image_size), in memory, in parallel.

    PNG/JPEG/any Pillow format, or DICOM (``.dcm``: windowed, MONOCHROME1 inverted; needs the
    ``dicom`` extra); colour is converted to luminance, non-square images are squashed to a
    square (chest X-ray datasets are near square). ``where[i]`` (optional) is the
    ``"file:line"`` to blame in the error for ``paths[i]``.

    Args:
        min_side: refuse source images whose shorter side is smaller; default
            ``image_cache.min_image_side(image_size)`` = image_size / 2 (at most 2x upscaling).
        workers: parallel decoders (default: the usable CPUs, at most 32; 1 = serial).
        backend: ``"thread"`` (default; Pillow decodes without the GIL) or ``"process"``.

    For lists too large for memory use ``read_filelist`` (memory-mapped cache).
    """
    from .image_cache import decode_images

    paths = [str(p) for p in paths]
    _require_dicom_support(paths, where)
    return decode_images(paths, image_size, where=where, min_side=min_side, workers=workers, backend=backend,
                         progress=progress)


def _parse_labels(values, where: str, text_format: bool = False) -> np.ndarray:
    if len(values) != N_LABELS:
        hint = " (a path containing whitespace needs the CSV format)" if text_format and len(values) > N_LABELS else ""
        raise DataError(f"{where}: expected {N_LABELS} labels ({', '.join(LABELS)}), got {len(values)}{hint}")
    bad = [v for v in values if v.strip() not in ("0", "1")]
    if bad:
        raise DataError(f"{where}: labels must be 0 or 1, got {bad[0]!r}")
    return np.array([int(v) for v in values], dtype=np.uint8)


def _decode_text(data: bytes, path: Path) -> str:
    """UTF-8 bytes → text; a leading byte-order mark is dropped; bad bytes name line and offset."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{path}:1: the file list is UTF-16 encoded (byte-order mark {data[:2].hex()}); "
                        "save it as UTF-8")
    base = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    body = data[base:]
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        pos = err.start
        # The text before the bad byte is valid; split it the way the reader splits lines.
        lines = (body[:pos].decode("utf-8") + "x").splitlines()
        column = len(lines[-1][:-1].encode("utf-8"))
        raise DataError(
            f"{path}:{len(lines)}: not valid UTF-8: byte 0x{body[pos]:02x} at byte {column} of the line "
            f"(byte offset {pos + base} of the file); save the list as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)") from None


def _check_relpath(rel: str, where: str) -> str:
    """Refuse empty, absolute and root-escaping paths; return the normalised relpath.

    The check is on the path text: ``posixpath.normpath`` must not start with ``..``
    (backslashes count as separators here, so Windows-style escapes are caught too).
    """
    if not rel:
        raise DataError(f"{where}: empty image path")
    if "\x00" in rel:
        raise DataError(f"{where}: image path {rel!r} contains a NUL character")
    if rel.startswith(("/", "\\")) or PureWindowsPath(rel).drive or os.path.isabs(rel):
        raise DataError(f"{where}: absolute image path {rel!r} refused; paths must be relative to the data root")
    escape = posixpath.normpath(rel.replace("\\", "/"))
    if escape == ".." or escape.startswith("../"):
        raise DataError(f"{where}: image path {rel!r} leads outside the data root (normalised: {escape!r}); "
                        "paths must stay inside the data root")
    return posixpath.normpath(rel)


def _read_rows(path: Path, text: str):
    """Yield (line number, relpath, patient id or None, labels) for every record."""
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
            yield line, parts[0], None, _parse_labels(parts[1:], f"{path}:{line}", text_format=True)


def _default_cache_dir(data_root: Path) -> Path | None:
    """``<data_root>/.trichotomy_cache`` if it can be created and written, else None."""
    from .image_cache import CACHE_DIRNAME

    folder = data_root / CACHE_DIRNAME
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def read_filelist(path, data_root, image_size: int, progress: bool = True, *, cache_dir=None, cache: bool = True,
                  min_side: int | None = None, drop_unlabelled: bool = True, workers: int | None = None,
                  backend: str = "thread", check_files: bool = True, info: dict | None = None) -> ImageSet:
    """Read a file list and its images into an ImageSet (names = the relpaths as written).

    Args:
        path: the list (``.csv`` → CSV format, anything else → ``<relpath> <8 labels>`` lines),
            UTF-8 (a byte-order mark is ignored).
        data_root: folder the relpaths are relative to; no path may leave it.
        image_size: side of the loaded square images (e.g. 32..512).
        progress: tqdm bars for long decodes (default True).
        cache_dir: folder of the decoded-image cache (see ``image_cache``); the pipeline passes
            its run directory. Default None = ``<data_root>/.trichotomy_cache``; when that
            cannot be written (a read-only dataset mount) the images are decoded into memory
            with a warning.
        cache: False decodes into memory and writes nothing (default True: the images of the
            returned ImageSet are a read-only memory map of the cache, decoded once, in parallel).
        min_side: minimum shorter side of a source image in pixels; default
            ``image_cache.min_image_side(image_size)`` = ceil(image_size / 2), i.e. at most 2x
            upscaling (the docstring there says why); 1 accepts every size.
        drop_unlabelled: drop rows whose 8 labels are all 0 (default True, as the paper does:
            images with none of the 8 findings are not used); the count goes into ``info``.
        workers: parallel decoders (default: the usable CPUs, at most 32; 1 = serial).
        backend: ``"thread"`` (default) or ``"process"`` pool.
        check_files: cache hits also compare each image file's size and mtime (default True).
        info: optional dict, filled with ``rows`` (records in the list), ``dropped_no_label``,
            ``images`` (rows kept), ``min_side``, ``cache`` (the cache file or None),
            ``cache_hit`` and ``resumed_rows``.

    Raises ``DataError`` naming file and line for every bad record or image, and
    ``ImportError`` naming the ``dicom`` extra for a ``.dcm`` path without pydicom.
    """
    from .image_cache import cache_key, cached_decode, decode_images, min_image_side

    path, data_root = Path(path), Path(data_root)
    if not path.is_file():
        raise DataError(f"file list not found: {path}")
    raw = path.read_bytes()
    text = _decode_text(raw, path)
    min_side = min_image_side(image_size) if min_side is None else int(min_side)
    rels, pids, labels, where, seen = [], [], [], [], {}
    n_rows = n_dropped = 0
    for line, rel, pid, lab in _read_rows(path, text):
        at = f"{path}:{line}"
        n_rows += 1
        norm = _check_relpath(rel, at)
        if norm in seen:
            raise DataError(f"{at}: duplicate path {rel!r} (first on line {seen[norm]})")
        seen[norm] = line
        if drop_unlabelled and not lab.any():
            n_dropped += 1
            continue
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
        if n_dropped:
            raise DataError(f"{path}: none of the {n_rows} rows has any of the {N_LABELS} findings "
                            f"({', '.join(LABELS)}); rows with all labels 0 are dropped")
        raise DataError(f"{path}: the file list has no images")
    _require_dicom_support(rels, where)
    files = [str(data_root / posixpath.normpath(r)) for r in rels]

    stats = {"rows": n_rows, "dropped_no_label": n_dropped, "images": len(rels), "min_side": min_side,
             "cache": None, "cache_hit": False, "resumed_rows": 0}
    folder = None
    if cache:
        if cache_dir is None:
            folder = _default_cache_dir(data_root)
            if folder is None:
                warnings.warn(f"{data_root}: cannot write the image cache {data_root / '.trichotomy_cache'}; "
                              "decoding into memory (pass cache_dir= to cache elsewhere)", stacklevel=2)
        else:
            folder = Path(cache_dir)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DataError(f"cache_dir: cannot create {folder}: {err}") from None
    if folder is not None:
        key = cache_key(filelist_sha256=hashlib.sha256(raw).hexdigest(), data_root=data_root,
                        image_size=image_size, names=rels, min_side=min_side)
        images = cached_decode(files, image_size, folder, key, where=where, min_side=min_side, workers=workers,
                               backend=backend, check_files=check_files, progress=progress, info=stats)
    else:
        images = decode_images(files, image_size, where=where, min_side=min_side, workers=workers, backend=backend,
                               progress=progress)
    if info is not None:
        info.update(stats)
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
    atomic_write_text(path, buf.getvalue())
