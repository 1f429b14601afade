"""The data stage's single entry point: a profile's ``data:`` section → train/val/test ImageSets."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .filelist import DataError, read_filelist
from .imageset import ImageSet
from .phantom import PHANTOM_DEFAULTS, SITES, generate_phantom
from .splits import split_patients

__all__ = ["DEFAULT_DATA_CFG", "validate_data_cfg", "build_dataset"]

# Every key a profile's ``data:`` section may set, with its default.
DEFAULT_DATA_CFG: dict = dict(
    source="phantom",  # "phantom" (PhantomCXR, embedded) or "filelist" (real images)
    image_size=32,  # side in pixels; 32 on CPU, 256-512 at paper scale
    n_patients=500,  # phantom only: number of patients (~2.8 images each)
    site="a",  # phantom only: acquisition style, one of SITES ("a", "b", "c")
    max_scans=8,  # phantom only: scans per patient are 1..max_scans
    seed=None,  # phantom only: dataset seed; None = the profile's seed
    phantom={},  # phantom only: overrides of phantom.PHANTOM_DEFAULTS
    filelist=None,  # filelist only: path of the list, relative to data_root
    split_fractions=(0.8, 0.1, 0.1),  # train/val/test fractions of patients
    val_patients=None,  # phantom only: None = the split's val; else this many fresh patients
    test_patients=None,  # phantom only: None = the split's test; else this many fresh patients
    split_seed=42,  # the paper's split seed
)


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise DataError(f"data.{field}: {msg}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_data_cfg(data_cfg: dict | None) -> dict:
    """Defaults filled in and every field checked; errors name the field (``data.n_patients``)."""
    data_cfg = dict(data_cfg or {})
    unknown = sorted(set(data_cfg) - set(DEFAULT_DATA_CFG))
    if unknown:
        raise DataError(f"data.{unknown[0]}: unknown key; known keys: {', '.join(DEFAULT_DATA_CFG)}")
    cfg = {**DEFAULT_DATA_CFG, **data_cfg}
    _check(cfg["source"] in ("phantom", "filelist"), "source", f"must be 'phantom' or 'filelist', got {cfg['source']!r}")
    _check(_is_int(cfg["image_size"]) and 16 <= cfg["image_size"] <= 1024, "image_size",
           f"must be an integer in 16..1024, got {cfg['image_size']!r}")
    _check(_is_int(cfg["n_patients"]) and cfg["n_patients"] >= 3, "n_patients",
           f"must be an integer >= 3, got {cfg['n_patients']!r}")
    _check(isinstance(cfg["site"], str) and cfg["site"] in SITES, "site",
           f"must be one of {sorted(SITES)}, got {cfg['site']!r}")
    _check(_is_int(cfg["max_scans"]) and 1 <= cfg["max_scans"] <= 8, "max_scans",
           f"must be an integer in 1..8, got {cfg['max_scans']!r}")
    _check(cfg["seed"] is None or _is_int(cfg["seed"]), "seed", f"must be an integer or null, got {cfg['seed']!r}")
    _check(isinstance(cfg["phantom"], dict), "phantom", f"must be a mapping, got {type(cfg['phantom']).__name__}")
    for key in cfg["phantom"]:
        _check(key in PHANTOM_DEFAULTS, f"phantom.{key}", f"unknown phantom parameter; known: {', '.join(PHANTOM_DEFAULTS)}")
    _check(cfg["filelist"] is None or isinstance(cfg["filelist"], str), "filelist",
           f"must be a path string or null, got {cfg['filelist']!r}")
    if cfg["source"] == "filelist":
        _check(cfg["filelist"] is not None, "filelist", "required when data.source is 'filelist'")
    fr = cfg["split_fractions"]
    _check(isinstance(fr, (list, tuple)) and len(fr) == 3
           and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in fr)
           and abs(sum(fr) - 1.0) < 1e-6,
           "split_fractions", f"must be three positive numbers summing to 1, got {fr!r}")
    cfg["split_fractions"] = tuple(float(f) for f in fr)
    _check(_is_int(cfg["split_seed"]), "split_seed", f"must be an integer, got {cfg['split_seed']!r}")
    for key in ("val_patients", "test_patients"):
        _check(cfg[key] is None or (_is_int(cfg[key]) and cfg[key] >= 2), key,
               f"must be null or an integer >= 2, got {cfg[key]!r}")
        if cfg["source"] == "filelist":
            _check(cfg[key] is None, key, "phantom only; a file list keeps the split's patients (split_fractions)")
    return cfg


def _split_cached(ds: ImageSet, cache: str, fractions, split_seed: int) -> dict[str, ImageSet]:
    """``split_patients`` of a memory-mapped ImageSet without loading its images.

    The split is computed on a stand-in whose names are row numbers (the split only reads
    labels and patient ids); each split's rows are then copied batch by batch into
    ``<cache>.<split>.<hash of its rows>.npy`` next to the cache and mapped read-only.
    """
    n = len(ds)
    stand_in = ImageSet(np.zeros((n, 1, 1), np.uint8), ds.labels, ds.patient_ids, np.arange(n).astype(str))
    from .image_cache import take_rows

    out = {}
    for name, part in split_patients(stand_in, fractions, split_seed).items():
        rows = part.names.astype(np.int64)
        tag = hashlib.sha256(rows.tobytes()).hexdigest()[:12]
        images = take_rows(ds.images, rows, Path(cache).with_name(f"{Path(cache).stem}.{name}.{tag}.npy"))
        out[name] = ImageSet(images, np.asarray(ds.labels)[rows], np.asarray(ds.patient_ids)[rows],
                             np.asarray(ds.names)[rows])
    return out


def _phantom_splits(cfg: dict, seed: int | None) -> dict[str, ImageSet]:
    """PhantomCXR split 80/10/10; ``val_patients`` / ``test_patients`` replace a split by fresh patients.

    The fresh patients continue the dataset's own patient sequence (indices ``n_patients``,
    ``n_patients + 1``, … of the same seed and site): the same population, none of them in
    train, and the training split is the same whatever their number. An evaluation population
    can so be made as large as power needs (the paper's 10 % of a few hundred patients
    leaves a handful of positives per finding) while the generator's training data stays put.
    The split's own val/test patients are then left unused.
    """
    kwargs = dict(image_size=cfg["image_size"], site=cfg["site"], max_scans=cfg["max_scans"],
                  seed=cfg["seed"] if cfg["seed"] is not None else (seed if seed is not None else 0),
                  params=cfg["phantom"] or None, progress=True)
    splits = split_patients(generate_phantom(cfg["n_patients"], **kwargs), cfg["split_fractions"], cfg["split_seed"])
    first = cfg["n_patients"]
    for name in ("val", "test"):
        n = cfg[f"{name}_patients"]
        if n is None:
            continue
        fresh = generate_phantom(n, first_patient=first, **kwargs)
        splits[name] = fresh if name == "test" else fresh.subset(np.asarray(fresh.labels).sum(1) <= 1)
        first += n
    return splits


def build_dataset(data_cfg: dict | None, data_root: str | Path | None = None, seed: int | None = None, *,
                  cache_dir: str | Path | None = None, info: dict | None = None) -> dict[str, ImageSet]:
    """Build the dataset a profile describes and split it patient-disjointly.

    Args:
        data_cfg: the profile's ``data:`` section (keys and defaults: ``DEFAULT_DATA_CFG``).
        data_root: folder a file list's paths are relative to (required for ``source: filelist``).
        seed: the profile's seed, used for the phantom when ``data.seed`` is null (else 0).
        cache_dir: file lists only: folder of the decoded-image cache (the pipeline passes its
            run directory); default None = ``<data_root>/.trichotomy_cache`` (see
            ``filelist.read_filelist``). The splits' images are then read-only memory maps
            of files in that folder (the full cache plus one file per split).
        info: optional dict; file lists only: filled with ``read_filelist``'s counts
            (``rows``, ``dropped_no_label``, ``images``, ``cache``, ``cache_hit``, …) and
            ``splits`` (images per split).

    Returns:
        ``{"train", "val", "test"}`` → ImageSet (train/val single-label, test multi-label too).
        PhantomCXR with ``val_patients`` / ``test_patients`` set: those splits are fresh
        patients of the same population (see ``_phantom_splits``).

    For a file list one line is printed: rows read, rows dropped for having none of the
    8 findings (as in the paper), images kept, and the cache used.
    """
    cfg = validate_data_cfg(data_cfg)
    if cfg["source"] == "phantom":
        return _phantom_splits(cfg, seed)
    if data_root is None:
        raise DataError("data_root: required when data.source is 'filelist' (give --data-root)")
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data_root: folder not found: {root}")
    listing = root / cfg["filelist"]
    stats: dict = {}
    ds = read_filelist(listing, root, cfg["image_size"], cache_dir=cache_dir, info=stats)
    where = (f"cache hit {stats['cache']}" if stats["cache_hit"] else f"cached to {stats['cache']}") \
        if stats["cache"] else "not cached"
    print(f"[data] {listing}: {stats['rows']} rows, {stats['dropped_no_label']} dropped with none of the "
          f"8 findings, {stats['images']} images ({where})", flush=True)
    if stats["cache"] and isinstance(ds.images, np.memmap):
        splits = _split_cached(ds, stats["cache"], cfg["split_fractions"], cfg["split_seed"])
    else:
        splits = split_patients(ds, cfg["split_fractions"], cfg["split_seed"])
    if info is not None:
        info.update(stats, splits={name: len(part) for name, part in splits.items()})
    return splits
