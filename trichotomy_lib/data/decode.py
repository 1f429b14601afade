"""Decoding image files into uint8 arrays, one by one or by a pool of workers.

**Decoding** (``decode_image``): Pillow for PNG/JPEG/any format it reads (colour → luminance,
16-bit grayscale → 8 bit by the PNG scale 65535 → 255), pydicom for ``.dcm`` files
(``dicom.read_dicom``: modality LUT, VOI LUT/window, MONOCHROME1 inversion). Images whose
shorter side is below ``min_side`` are refused (see ``min_image_side``); the rest are
resized to ``image_size``² (JPEGs are first DCT-downscaled to at least 2× the target, then
area-reduced and Lanczos-filtered). Pillow releases the GIL while it decodes and resizes, so
a thread pool scales with cores; a process pool (``backend="process"``) is there for
decoders that hold the GIL (pydicom's pure-Python paths). The result does not depend on the
pool or the number of workers.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from .dicom import is_dicom_path, read_dicom
from .filelist import DataError

__all__ = ["DECODER_VERSION", "MIN_SIDE_FRACTION", "DEFAULT_BATCH", "ImageRefused", "default_workers",
           "min_image_side", "decode_image", "decode_images"]

# Bump when decode_image's output bytes change: every existing cache becomes a miss.
DECODER_VERSION = 1
# An image may be upscaled by at most 1 / MIN_SIDE_FRACTION (see min_image_side).
MIN_SIDE_FRACTION = 0.5
# Rows decoded between two flushes of the cache (also the resume granularity).
DEFAULT_BATCH = 256


def default_workers() -> int:
    """Worker count when none is given: the CPUs this process may run on, at most 32."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(32, n))


def min_image_side(image_size: int) -> int:
    """Smallest accepted shorter side of a source image for a target side ``image_size``.

    ``ceil(image_size * MIN_SIDE_FRACTION)`` = ``image_size / 2``: up to 2× upscaling the
    result is still the same radiograph at a lower resolution (e.g. CheXpert-small's 320 px
    for 512 px training: 1.6×); beyond that the interpolation filter, not the patient,
    makes the pixels, and a model would learn its blur as a property of "real" images. A
    1×1 or thumbnail-size file is a broken export, never a chest X-ray. Every dataset this
    project reads is far above the bound (ChestX-ray14 1024 px, MIMIC-CXR-JPG ~2500 px).
    """
    return max(1, math.ceil(int(image_size) * MIN_SIDE_FRACTION))


class ImageRefused(ValueError):
    """A readable image that is not accepted (too small, several frames, unsupported depth)."""


def _to_gray(im):
    """A Pillow image → mode "L" (8-bit luminance), refusing modes that cannot be mapped faithfully."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale (PNG stores any 9..16-bit depth on the full 0..65535 scale):
        # 8 bit by x * 255 / 65535, not Pillow's clipping of everything above 255 to white.
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.rint(a * (255.0 / 65535.0)).astype(np.uint8))
    if im.mode in ("I", "F"):
        raise ImageRefused(f"{im.mode!r} (32-bit) images are not supported; export 8- or 16-bit PNG, JPEG or DICOM")
    if im.mode != "L":
        im = im.convert("L")  # colour → luminance (ITU-R 601-2), palette/alpha/bilevel → gray
    return im


def decode_image(path, image_size: int, min_side: int | None = None) -> np.ndarray:
    """One image file → (image_size, image_size) uint8, 0 = black.

    Args:
        path: a PNG/JPEG/other Pillow file, or a DICOM file (suffix in ``dicom.DICOM_SUFFIXES``).
        image_size: target side in pixels (>= 1; 32..512 in this project).
        min_side: refuse images whose shorter side is smaller (``ImageRefused``, a ValueError); default
            ``min_image_side(image_size)`` = image_size / 2; 1 accepts everything.

    Non-square images are squashed to a square (chest X-ray datasets are near square).
    """
    from PIL import Image

    image_size = int(image_size)
    min_side = min_image_side(image_size) if min_side is None else int(min_side)
    if is_dicom_path(path):
        im = Image.fromarray(read_dicom(path))  # (H, W) uint8 → mode "L"
        opened = None
    else:
        im = opened = Image.open(path)
    try:
        w, h = im.size
        if min(w, h) < min_side:
            raise ImageRefused(
                f"image is {w}x{h} px; its shorter side is below the minimum {min_side} px for image_size "
                f"{image_size} (more than 2x upscaling; see image_cache.min_image_side)")
        if getattr(im, "n_frames", 1) > 1:
            raise ImageRefused(f"image has {im.n_frames} frames; expected a single image")
        if im.format == "JPEG" and min(w, h) > 2 * image_size:
            # DCT-domain downscaling while decoding (by 1/2, 1/4 or 1/8), keeping >= 2x the target.
            im.draft("L", (2 * image_size, 2 * image_size))
        im = _to_gray(im)
        if im.size != (image_size, image_size):
            # Downscaling: a box/area filter first (anti-aliasing), then Lanczos for the rest.
            im = im.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(im, dtype=np.uint8)
    finally:
        if opened is not None:
            opened.close()


def _decode_at(path: str, image_size: int, min_side: int, where: str) -> np.ndarray:
    """decode_image with the ``file:line`` of the list in every error (a DataError)."""
    at = f"{where}: " if where else ""
    if not os.path.isfile(path):
        raise DataError(f"{at}image file not found: {path}")
    try:
        return decode_image(path, image_size, min_side)
    except ImportError:
        raise
    except ImageRefused as err:
        raise DataError(f"{at}image {path} refused: {err}") from None
    except Exception as err:  # Pillow/pydicom raise many types for corrupt or unsupported files
        raise DataError(f"{at}cannot read image {path}: {err}") from None


def _decode_rows(paths, image_size, min_side, wheres) -> np.ndarray:
    """Worker task: several images → (n, image_size, image_size) uint8."""
    out = np.empty((len(paths), image_size, image_size), dtype=np.uint8)
    for k, (path, where) in enumerate(zip(paths, wheres)):
        out[k] = _decode_at(path, image_size, min_side, where)
    return out


@contextmanager
def _pool(workers: int, backend: str):
    if backend not in ("thread", "process"):
        raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")
    if workers <= 1:
        yield None
        return
    executor = (ThreadPoolExecutor if backend == "thread" else ProcessPoolExecutor)(max_workers=workers)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _fill(target, start: int, stop: int, paths, wheres, image_size, min_side, executor, workers, bar) -> None:
    """Decode rows start..stop into ``target[start:stop]``; the first error in row order is raised."""
    if executor is None:
        for i in range(start, stop):
            target[i] = _decode_at(paths[i], image_size, min_side, wheres[i])
            if bar is not None:
                bar.update(1)
        return
    # Each task is a few consecutive rows: fewer round trips for processes, same result.
    step = max(1, min(16, math.ceil((stop - start) / (4 * workers))))
    spans = [(a, min(a + step, stop)) for a in range(start, stop, step)]
    futures = [executor.submit(_decode_rows, paths[a:b], image_size, min_side, wheres[a:b]) for a, b in spans]
    try:
        for (a, b), fut in zip(spans, futures):
            target[a:b] = fut.result()
            if bar is not None:
                bar.update(b - a)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _progress(total: int, progress: bool, desc: str):
    if not progress or total <= 200:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def decode_images(paths, image_size: int, *, where=None, min_side: int | None = None, workers: int | None = None,
                  backend: str = "thread", progress: bool = True) -> np.ndarray:
    """Decode image files into an in-memory (N, image_size, image_size) uint8 array, in parallel.

    Args:
        paths: image files (see ``decode_image`` for formats).
        image_size: target side in pixels.
        where: optional ``"file:line"`` per path, put in front of every error.
        min_side: minimum shorter side of a source image (default ``min_image_side(image_size)``).
        workers: parallel decoders (default ``default_workers()``; 1 = serial in this thread).
        backend: ``"thread"`` (default) or ``"process"``.
        progress: tqdm bar for more than 200 images.

    The result does not depend on ``workers`` or ``backend``. Errors are ``DataError`` naming
    the file (and line, given ``where``); a missing pydicom is an ``ImportError``.
    """
    paths = [str(p) for p in paths]
    wheres = list(where) if where is not None else [""] * len(paths)
    min_side = min_image_side(image_size) if min_side is None else int(min_side)
    workers = default_workers() if workers is None else max(1, int(workers))
    out = np.empty((len(paths), int(image_size), int(image_size)), dtype=np.uint8)
    bar = _progress(len(paths), progress, "decoding images")
    try:
        with _pool(workers, backend) as ex:
            # Batches bound the decoded-but-not-yet-copied results held by the pool.
            for a in range(0, len(paths), DEFAULT_BATCH):
                _fill(out, a, min(a + DEFAULT_BATCH, len(paths)), paths, wheres, int(image_size), min_side, ex,
                      workers, bar)
    finally:
        if bar is not None:
            bar.close()
    return out


# ------------------------------------------------------------------------------------- cache
