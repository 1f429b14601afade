"""Benchmark: decoding a file list's images, serial into memory vs the parallel memory-mapped cache.

    .venv/bin/python benchmarks/load.py                # 20,000 PNGs of 256 px
    .venv/bin/python benchmarks/load.py --n 2000       # a quick check
    .venv/bin/python benchmarks/load.py --n 2000 --image-size 128 --workers 8

Writes ``--n`` grayscale PNGs of ``--size`` px into a temporary folder (smooth radiograph-like
content with film-grain noise, so they compress like real chest X-rays rather than like pure
noise), then runs each arm in its own fresh Python process, so that each one's peak resident
memory (``resource.getrusage(...).ru_maxrss``) is its own:

* **serial, in memory**: ``decode_images(workers=1)`` — one Pillow decode after another into
  one in-memory array (the reader before the cache);
* **threads, in memory**: ``decode_images`` with a thread pool;
* **cache build, threads / processes**: ``image_cache.cached_decode`` — parallel decode
  straight into a memory-mapped ``.npy`` file, flushed and unmapped batch by batch;
* **cache hit**: the same call again (stat every file, map the finished cache), plus one
  streaming pass over all rows (``sum``) to show that reading it back needs no memory either.

Reported: images/s, the ratio to the serial arm, peak RSS, peak RSS above the process's
footprint after imports (torch alone is a few hundred MB), and peak *anonymous* memory above
imports (``RssAnon``, sampled every 2 ms): RSS also counts pages of a mapped file that were
touched, which the kernel drops at will, so the anonymous peak is the memory a decode really
needs. Timings are wall-clock on whatever
machine runs it; the page cache is warm (files were just written), so this measures decoding,
not the disk. No thresholds: it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ARMS = ("serial", "threads", "cache_threads", "cache_processes", "cache_hit")
LABEL = {
    "serial": "serial, in memory",
    "threads": "threads, in memory",
    "cache_threads": "cache build, threads",
    "cache_processes": "cache build, processes",
    "cache_hit": "cache hit + one streaming pass",
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _anon_mb() -> float:
    """Anonymous resident memory (heap, arrays): what the kernel cannot drop, unlike mapped file pages."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Peak of ``_anon_mb`` sampled every 2 ms by a background thread."""

    def __enter__(self):
        import threading

        self.peak, self._stop = _anon_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _anon_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _anon_mb())


def write_pngs(folder: Path, n: int, size: int, workers: int) -> list[str]:
    """``n`` PNGs (ChestX-ray14 names, 5 scans per patient) of smooth content + noise."""
    from PIL import Image
    from tqdm.auto import tqdm

    (folder / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def one(k: int) -> str:
        rng = np.random.default_rng(k)
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.2, 0.4)]
        body = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        ribs = 0.15 * np.sin(2 * np.pi * (yy * rng.uniform(6, 10) + 0.1 * np.sin(6 * xx)))
        img = 40 + 170 * body + 25 * ribs * body + rng.normal(0, 6, (size, size))
        rel = f"images/{k // 5:08d}_{k % 5:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / rel)
        return rel

    with ThreadPoolExecutor(workers) as ex:
        rels = list(tqdm(ex.map(one, range(n)), total=n, desc="writing PNGs", unit="img", disable=n < 500))
    return rels


def run_arm(arm: str, folder: Path, image_size: int, workers: int) -> dict:
    """One arm, in this (fresh) process; returns seconds, peak RSS and RSS after imports."""
    from trichotomy_lib.data import image_cache as ic

    rels = (folder / "rels.txt").read_text().split()
    paths = [str(folder / r) for r in rels]
    cache = folder / "cache"
    key = ic.cache_key(filelist_sha256="benchmark", data_root=folder, image_size=image_size, names=rels)
    base, base_anon = _rss_mb(), _anon_mb()
    sampler = AnonPeak().__enter__()
    t0 = time.perf_counter()
    if arm == "serial":
        out = ic.decode_images(paths, image_size, workers=1, progress=False)
    elif arm == "threads":
        out = ic.decode_images(paths, image_size, workers=workers, progress=False)
    elif arm in ("cache_threads", "cache_processes"):
        shutil.rmtree(cache, ignore_errors=True)
        out = ic.cached_decode(paths, image_size, cache, key, workers=workers,
                               backend="thread" if arm == "cache_threads" else "process", progress=False)
    elif arm == "cache_hit":
        info: dict = {}
        out = ic.cached_decode(paths, image_size, cache, key, workers=workers, progress=False, info=info)
        assert info["cache_hit"], "cache_hit arm found no cache"
        total = 0
        for a in range(0, len(out), 1024):  # stream every row once
            total += int(out[a:a + 1024].sum(dtype=np.int64))
    else:
        raise ValueError(arm)
    seconds = time.perf_counter() - t0
    sampler.__exit__(None, None, None)
    digest = int(np.asarray(out[:: max(1, len(out) // 64)], dtype=np.int64).sum())  # same bytes across arms
    return {"arm": arm, "seconds": seconds, "n": len(paths), "peak_mb": _peak_mb(), "base_mb": base,
            "anon_mb": sampler.peak - base_anon, "digest": digest}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="number of PNGs (default 20000)")
    ap.add_argument("--size", type=int, default=256, help="side of the written PNGs in px (default 256)")
    ap.add_argument("--image-size", type=int, default=None, help="decoded side (default: --size, no resize)")
    ap.add_argument("--workers", type=int, default=None, help="parallel decoders (default: usable CPUs, <= 32)")
    ap.add_argument("--keep", default=None, help="folder to write into and keep (default: a temp dir, removed)")
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: run one arm
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    image_size = args.image_size or args.size

    from trichotomy_lib.data.image_cache import default_workers

    workers = args.workers or default_workers()
    if args.arm:
        print(json.dumps(run_arm(args.arm, Path(args.dir), image_size, workers)))
        return

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="trichotomy-load-"))
    try:
        t0 = time.perf_counter()
        rels = write_pngs(folder, args.n, args.size, workers)
        (folder / "rels.txt").write_text("\n".join(rels) + "\n")
        mb = sum(os.path.getsize(folder / r) for r in rels) / 2**20
        print(f"wrote {args.n} PNGs of {args.size} px ({mb:.0f} MB) in {time.perf_counter() - t0:.1f} s; "
              f"decoding to {image_size} px with {workers} workers on {os.cpu_count()} CPUs")
        rows = []
        for arm in ARMS:
            cmd = [sys.executable, __file__, "--arm", arm, "--dir", str(folder), "--n", str(args.n),
                   "--size", str(args.size), "--image-size", str(image_size), "--workers", str(workers)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        if len({r["digest"] for r in rows}) != 1:
            raise SystemExit(f"arms disagree on the decoded bytes: {[r['digest'] for r in rows]}")
        serial = rows[0]["n"] / rows[0]["seconds"]
        print(f"\n{'arm':<32}{'images/s':>10}{'x serial':>10}{'peak RSS MB':>13}{'above imports':>15}"
              f"{'peak anon MB':>14}")
        for r in rows:
            rate = r["n"] / r["seconds"]
            print(f"{LABEL[r['arm']]:<32}{rate:>10.0f}{rate / serial:>10.2f}{r['peak_mb']:>13.0f}"
                  f"{r['peak_mb'] - r['base_mb']:>15.0f}{r['anon_mb']:>14.0f}")
        print(f"\narray size: {args.n * image_size * image_size / 2**20:.0f} MB of uint8 "
              f"({args.n} x {image_size}²); same decoded bytes in every arm")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
