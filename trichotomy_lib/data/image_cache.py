"""A memory-mapped uint8 cache of decoded images (read once, then stream from disk).

Decoding a 100k-image chest X-ray list takes minutes and, held in memory, tens of GB
(ChestX-ray14's 67k training images at 512 px are 17.6 GB of uint8). Here every image is
decoded once, by a pool of workers, straight into an ``.npy`` file opened with
``numpy.lib.format.open_memmap``; later loads map that file read-only, so pages are read
from disk on demand and peak memory is one batch, not the dataset.

Decoding itself is ``data.decode``.

**Cache layout** in ``cache_dir`` (the caller's run directory, or
``<data_root>/.trichotomy_cache`` by default — see ``filelist.read_filelist``), for a key
``K`` (``cache_key``: the file list's content hash, the resolved data root, the image size,
the minimum side, the decoded relpaths and ``DECODER_VERSION``):

* ``images-K.npy`` + ``images-K.json``: a finished cache. The ``.npy`` only appears under
  this name by an atomic rename after every row is written and flushed; the JSON is written
  (atomically) after that rename and is the commit point: a ``.npy`` without it is never
  trusted, and a rebuild deletes both before it starts. The JSON records the shape and a
  fingerprint of the image files (size and modification time of each); a changed file
  invalidates the cache.
* ``images-K.partial.npy`` + ``images-K.partial.json``: a decode in progress. Batches are
  written in order; after each one the data is flushed and the progress file (atomic)
  records how many rows are done and a fingerprint per batch. An interrupted decode
  resumes after the last batch whose files are unchanged; it is never read as a cache.
* ``images-K.lock``: held (``fcntl.flock``) while building, so two processes never write
  the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from ..io import atomic_path
from .decode import (
    DECODER_VERSION,
    DEFAULT_BATCH,
    MIN_SIDE_FRACTION,
    ImageRefused,
    _fill,
    _pool,
    _progress,
    decode_image,
    decode_images,
    default_workers,
    min_image_side,
)
from .filelist import DataError

__all__ = [
    "DECODER_VERSION", "MIN_SIDE_FRACTION", "CACHE_DIRNAME", "ImageRefused", "default_workers", "min_image_side",
    "decode_image", "decode_images", "cache_key", "file_fingerprint", "cached_decode", "take_rows",
]

# Default folder name of the cache inside a data root (used when the caller gives none).
CACHE_DIRNAME = ".trichotomy_cache"


def cache_key(*, filelist_sha256: str, data_root, image_size: int, names, min_side: int | None = None) -> str:
    """The cache key (24 hex digits) of one decoded image array.

    Folds in the file list's content hash, the resolved data root, the image size, the
    minimum side, the ordered relpaths that are decoded (rows dropped by the reader are not
    part of the array) and ``DECODER_VERSION``. Any change gives a different key.
    """
    min_side = min_image_side(image_size) if min_side is None else int(min_side)
    h = hashlib.sha256()
    h.update(json.dumps({"filelist_sha256": filelist_sha256, "data_root": str(Path(data_root).resolve()),
                         "image_size": int(image_size), "min_side": min_side, "decoder": DECODER_VERSION,
                         "n": len(names)}, sort_keys=True).encode())
    for name in names:
        h.update(b"\0" + str(name).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:24]


def file_fingerprint(paths, batch: int = DEFAULT_BATCH, where=None) -> tuple[str, list[str]]:
    """Digests of the image files' sizes and modification times: (whole list, one per batch).

    The first does not depend on ``batch`` (it is what a finished cache records); the second
    lets an interrupted build keep the batches whose files are unchanged. A missing file is
    a ``DataError`` naming it (and its ``where`` entry).
    """
    total, digests = hashlib.sha256(), []
    for a in range(0, len(paths), batch):
        h = hashlib.sha256()
        for i in range(a, min(a + batch, len(paths))):
            try:
                st = os.stat(paths[i])
            except OSError:
                at = f"{where[i]}: " if where is not None and where[i] else ""
                raise DataError(f"{at}image file not found: {paths[i]}") from None
            entry = f"{i}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            h.update(entry)
            total.update(entry)
        digests.append(h.hexdigest()[:16])
    return total.hexdigest()[:24], digests


def _write_json(path: Path, obj: dict) -> None:
    """Atomic and on disk before the rename (the JSON is the cache's commit point)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_final(final: Path, meta_path: Path, key: str, shape, fingerprint) -> np.memmap | None:
    """The finished cache if it is there, complete and current; else None."""
    meta = _read_json(meta_path)
    if not final.exists() or meta is None or meta.get("key") != key or meta.get("shape") != list(shape):
        return None
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return None
    try:
        arr = np.load(final, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.shape != tuple(shape) or arr.dtype != np.uint8:
        return None
    return arr


def cached_decode(paths, image_size: int, cache_dir, key: str, *, where=None, min_side: int | None = None,
                  workers: int | None = None, backend: str = "thread", batch: int = DEFAULT_BATCH,
                  check_files: bool = True, progress: bool = True, info: dict | None = None) -> np.memmap:
    """Decoded images of ``paths`` as a read-only memory map of ``cache_dir/images-<key>.npy``.

    Builds the cache on a miss (in parallel, resuming an interrupted build), maps it on a hit.

    Args:
        paths, image_size, where, min_side, workers, backend: as for ``decode_images``.
        cache_dir: folder of the cache files (created if missing).
        key: ``cache_key(...)`` of this list; names the files.
        batch: rows decoded between two flushes (default 256; memory held: about
            batch × image_size² bytes plus one source image per worker).
        check_files: fold each image file's size and modification time into the check
            (default True: an edited image invalidates the cache; False trusts the key alone,
            e.g. when the images are gone but the cache was copied).
        progress: tqdm bar for more than 200 images.
        info: optional dict, filled with ``cache`` (the .npy path), ``cache_hit`` (bool) and
            ``resumed_rows`` (rows reused from an interrupted build).
    """
    paths = [str(p) for p in paths]
    n, s = len(paths), int(image_size)
    wheres = list(where) if where is not None else [""] * n
    min_side = min_image_side(s) if min_side is None else int(min_side)
    workers = default_workers() if workers is None else max(1, int(workers))
    batch = max(1, int(batch))
    if n == 0:
        raise ValueError("cached_decode: no images to decode")
    shape = (n, s, s)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final, meta_path = cache_dir / f"images-{key}.npy", cache_dir / f"images-{key}.json"
    partial, progress_path = cache_dir / f"images-{key}.partial.npy", cache_dir / f"images-{key}.partial.json"
    info = info if info is not None else {}
    info.update(cache=str(final), cache_hit=False, resumed_rows=0)

    fingerprint, chunks = file_fingerprint(paths, batch, wheres) if check_files else (None, None)
    hit = _open_final(final, meta_path, key, shape, fingerprint)
    if hit is not None:
        info["cache_hit"] = True
        return hit

    with _locked(cache_dir / f"images-{key}.lock"):
        hit = _open_final(final, meta_path, key, shape, fingerprint)  # built by another process meanwhile
        if hit is not None:
            info["cache_hit"] = True
            return hit

        # Resume: keep the leading batches whose files have not changed since they were written.
        start = 0
        state = _read_json(progress_path)
        if (partial.exists() and state is not None and state.get("key") == key and state.get("shape") == list(shape)
                and state.get("batch") == batch and state.get("check_files") == check_files):
            done_chunks = state.get("chunks") or []
            same = 0
            for old, new in zip(done_chunks, chunks if chunks is not None else done_chunks):
                if old != new:
                    break
                same += 1
            start = min(n, same * batch, int(state.get("done", 0)))
            try:
                mm = open_memmap(partial, mode="r+")
                ok = mm.shape == shape and mm.dtype == np.uint8
                del mm
            except (OSError, ValueError):
                ok = False
            start = start if ok else 0
        else:
            state = None
        if start == 0:
            need = n * s * s + 4096 - (partial.stat().st_size if partial.exists() else 0)
            free = _free_bytes(cache_dir)
            if free is not None and need > free:
                raise DataError(f"{cache_dir}: not enough disk space for the image cache: needs {need / 2**30:.2f} GiB, "
                                f"{free / 2**30:.2f} GiB free (pass another cache_dir)")
            for p in (partial, progress_path):
                if p.exists():
                    p.unlink()
            created = open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
            del created
        info["resumed_rows"] = start
        # A finished cache that did not validate is removed before anything new is committed,
        # so its metadata can never be paired with other data.
        for p in (meta_path, final):
            if p.exists():
                p.unlink()

        bar = _progress(n, progress, "decoding images → cache")
        if bar is not None and start:
            bar.update(start)
        try:
            with _pool(workers, backend) as ex:
                for a in range(start, n, batch):
                    b = min(a + batch, n)
                    # Map, fill one batch, flush and unmap: dirty pages never exceed one batch.
                    mm = open_memmap(partial, mode="r+")
                    _fill(mm, a, b, paths, wheres, s, min_side, ex, workers, bar)
                    mm.flush()
                    del mm
                    _write_json(progress_path, {"key": key, "shape": list(shape), "batch": batch, "done": b,
                                                "check_files": check_files,
                                                "chunks": (chunks[: math.ceil(b / batch)] if chunks else [])})
        finally:
            if bar is not None:
                bar.close()
        _fsync(partial)
        # Commit: the complete data under its final name, then the metadata that vouches for it
        # (a final .npy without its JSON is never trusted).
        os.replace(partial, final)
        _write_json(meta_path, {"key": key, "shape": list(shape), "dtype": "uint8", "image_size": s,
                                "min_side": min_side, "decoder": DECODER_VERSION, "fingerprint": fingerprint,
                                "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if progress_path.exists():
            progress_path.unlink()
    return np.load(final, mmap_mode="r", allow_pickle=False)


def _free_bytes(folder: Path) -> int | None:
    try:
        import shutil

        return shutil.disk_usage(folder).free
    except OSError:
        return None


def take_rows(source: np.ndarray, index, dest, batch: int = 1024, progress: bool = True) -> np.memmap:
    """``source[index]`` written to the ``.npy`` file ``dest`` batch by batch; returns it memory-mapped.

    For splitting a memory-mapped cache without loading it: memory held is one batch of
    rows. Atomic (temp file + rename); an existing ``dest`` of the right shape and dtype is
    reused as is, so ``dest``'s name must identify ``source`` and ``index`` (a hash of both).
    """
    index = np.asarray(index, dtype=np.int64)
    dest = Path(dest)
    shape = (len(index), *source.shape[1:])
    if dest.exists():
        try:
            arr = np.load(dest, mmap_mode="r", allow_pickle=False)
            if arr.shape == shape and arr.dtype == source.dtype:
                return arr
        except (OSError, ValueError):
            pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".tmp.npy", dir=dest.parent)
    os.close(fd)
    try:
        out = open_memmap(tmp, mode="w+", dtype=source.dtype, shape=shape)
        bar = _progress(len(index), progress and len(index) * int(np.prod(shape[1:])) > 2**28, f"writing {dest.name}")
        for a in range(0, len(index), batch):
            out[a:a + batch] = source[index[a:a + batch]]
            if bar is not None:
                bar.update(len(index[a:a + batch]))
        if bar is not None:
            bar.close()
        out.flush()
        del out
        _fsync(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return np.load(dest, mmap_mode="r", allow_pickle=False)
