"""Export an audited release as a shareable dataset (Hugging Face ``imagefolder`` layout).

    out_dir/
      README.md            dataset card: method, settings, privacy and utility tables, verdict
      privacy.json         the same numbers, machine-readable
      train/metadata.csv   file_name + one 0/1 column per label (LABELS order)
      train/<name>.png     8-bit grayscale, IHDR/IDAT/IEND chunks only

``datasets.load_dataset("imagefolder", data_dir=out_dir)`` loads it as one ``train`` split.

Unlinkability by construction: ``export_release`` accepts the pixels and the labels of each
image and nothing else per sample. File names are 32 letters drawn from the operating
system's CSPRNG (``secrets``), independent of any index or seed; rows and files are written
in the order of those names, which is a uniformly random permutation of the input order;
every file gets the same timestamp. So neither names, order, nor times carry the source
order — which for file-list datasets is the order of patient ids.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.imageset import LABELS, N_LABELS
from .card import FORMAT, privacy_document, render_card
from .leaks import Leak, check_tokens, find_leaks, png_chunks
from .tables import check_privacy, check_settings, check_text, check_utility
from .verdict import DEFAULT_BOUND, ExportRefused, Verdict, judge

__all__ = ["ExportReport", "export_release", "DEFAULT_PRETTY_NAME", "SPLIT", "NAME_ALPHABET"]

SPLIT = "train"
DEFAULT_PRETTY_NAME = "Synthetic chest radiographs (DiADM, privacy-filtered)"
# Lower-case consonants: no digits, so a random name can never spell a numeric patient id
# (hex names do: about 1 in 6,000 contains some 8-digit ChestX-ray14 id), and no vowels, so
# no words. 32 letters of 20 symbols carry 138 bits.
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz"
NAME_LENGTH = 32
_PNG_CHUNKS = {b"IHDR", b"IDAT", b"IEND"}


@dataclass(frozen=True)
class ExportReport:
    """What ``export_release`` wrote.

    out_dir: the export folder. n_images: rows written. verdict: the privacy audit's
    ``Verdict`` (``verdict.passed`` False only with ``allow_failed_audit=True``).
    forbidden_checked: how many forbidden tokens the finished export was scanned for.
    """

    out_dir: Path
    n_images: int
    verdict: Verdict
    forbidden_checked: int

    @property
    def readme(self) -> Path:
        return self.out_dir / "README.md"

    @property
    def metadata(self) -> Path:
        return self.out_dir / SPLIT / "metadata.csv"

    @property
    def privacy_json(self) -> Path:
        return self.out_dir / "privacy.json"


def _check_images(images, labels) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        shape = getattr(images, "shape", None)
        raise ValueError(f"images: expected a uint8 numpy array (N, H, W), got {type(images).__name__} "
                         f"{getattr(images, 'dtype', '')} {shape}")
    n, h, w = images.shape
    if n < 1 or h < 1 or w < 1:
        raise ValueError(f"images: need at least one non-empty image, got shape {images.shape}")
    labels = np.asarray(labels)
    if labels.shape != (n, N_LABELS):
        raise ValueError(f"labels: expected shape ({n}, {N_LABELS}) (one row per image, columns {list(LABELS)}), "
                         f"got {labels.shape}")
    if labels.dtype.kind not in "buif":
        raise ValueError(f"labels: expected numbers 0/1, got dtype {labels.dtype}")
    bad = np.argwhere(~np.isin(labels, (0, 1)))
    if len(bad):
        r, c = bad[0]
        raise ValueError(f"labels: every entry must be 0 or 1; row {r}, column {LABELS[c]!r} is {labels[r, c]!r} "
                         f"({len(bad)} bad entries)")
    return images, labels.astype(np.uint8)


def _random_names(n: int) -> list[str]:
    names: set[str] = set()
    while len(names) < n:
        names.add("".join(secrets.choice(NAME_ALPHABET) for _ in range(NAME_LENGTH)))
    return list(names)


def _write_png(path: Path, image: np.ndarray, compress_level: int) -> None:
    """One grayscale PNG with no ancillary chunks (PIL adds none unless asked)."""
    Image.fromarray(np.ascontiguousarray(image), mode="L").save(path, format="PNG", compress_level=compress_level)


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, compress_level: int, progress: bool) -> None:
    split = root / SPLIT
    split.mkdir()
    names = _random_names(len(images))
    order = sorted(range(len(images)), key=names.__getitem__)   # a uniformly random permutation
    with open(split / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file_name", *LABELS])
        for i in tqdm(order, desc="export images", unit="image", disable=not progress):
            file_name = f"{names[i]}.png"
            _write_png(split / file_name, images[i], compress_level)
            writer.writerow([file_name, *labels[i].tolist()])


def _check_layout(root: Path, n: int) -> None:
    """The export holds exactly the expected files, and every PNG only the three basic chunks."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    pngs = [f for f in files if f.startswith(f"{SPLIT}/") and f.endswith(".png")]
    extra = set(files) - set(pngs) - {"README.md", "privacy.json", f"{SPLIT}/metadata.csv"}
    if extra or len(pngs) != n or len(files) != n + 3:
        raise RuntimeError(f"export layout check failed: {len(pngs)} images for {n} rows, unexpected {sorted(extra)}")
    for f in pngs:
        kinds = {k for k, _ in png_chunks((root / f).read_bytes(), f)}
        if kinds - _PNG_CHUNKS:
            raise RuntimeError(f"{f}: PNG carries chunks {sorted(kinds - _PNG_CHUNKS)}; only IHDR, IDAT, IEND allowed")


def _is_export(path: Path) -> bool:
    try:
        return json.loads((path / "privacy.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an older ``out`` is moved aside, then removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_release(out_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray, privacy, utility,
                   settings: dict, *, bound: float = DEFAULT_BOUND, level: float = 0.95,
                   allow_failed_audit: bool = False, forbidden=(), overwrite: bool = False,
                   source_dataset: str | None = None, pretty_name: str = DEFAULT_PRETTY_NAME,
                   compress_level: int = 6, progress: bool = True) -> ExportReport:
    """Write an audited synthetic release as a shareable ``imagefolder`` dataset with a card.

    Args:
        out_dir: the folder to create. It must not exist, or be empty; a previous export
            (a folder with this exporter's ``privacy.json``) is replaced only with
            ``overwrite=True``; any other non-empty folder is never touched.
        images: (N, H, W) uint8, N >= 1. The only per-sample inputs are ``images`` and
            ``labels``, so ids, names, indices and seeds cannot reach the export.
        labels: (N, 8), every entry 0 or 1, columns in ``LABELS`` order.
        privacy: the audit, one row per attacker (DataFrame or list of mappings; fields in
            ``tables.PRIVACY_FIELDS``; ``tables.attacker_rows`` converts an
            ``evaluate_release`` result).
        utility: one row per training set (fields in ``tables.UTILITY_FIELDS``), one of them
            ``training_set == "this release"``; ``tables.utility_rows`` converts
            ``utility_row`` results.
        settings: generator and filter settings for the card (sampler, guidance, K, veto
            thresholds, …); nested mappings allowed; lists of at most 32 values.
        bound: the export passes when every attacker's upper risk bound is <= bound;
            in (0, 1], default 0.05.
        level: confidence level of the table's intervals, in (0, 1), default 0.95 (text only).
        allow_failed_audit: research override, default False. When True a failed audit is
            exported anyway and the card opens with a capitalised FAILED warning.
        forbidden: tokens (str or bytes, at least 4 bytes each) that must not occur anywhere in the
            export, e.g. every patient id and source name of the training data. The finished
            export is scanned with ``find_leaks``; a hit refuses the export (no override).
        overwrite: replace a previous export at ``out_dir``, default False.
        source_dataset: name of the real dataset the generator was trained on (card text);
            default None (not named).
        pretty_name: the card's title and ``pretty_name``; one line.
        compress_level: PNG zlib level, 0–9, default 6 (lossless at every level).
        progress: show a progress bar while writing images, default True.

    Returns:
        ``ExportReport``.

    Raises:
        ValueError: bad input (the message names the field).
        ExportRefused: the audit failed (message: each failing attacker, its upper bound and
            the excess) or a forbidden token was found. Nothing is written in either case.
        FileExistsError: ``out_dir`` is a file, or a non-empty folder that may not be replaced.

    Everything is written into a temporary folder beside ``out_dir`` and renamed into place
    only when complete and checked; on any error the temporary folder is removed and
    ``out_dir`` is left as it was.
    """
    images, labels = _check_images(images, labels)
    attackers, utility_rows = check_privacy(privacy), check_utility(utility)
    settings = check_settings(settings)
    pretty_name = check_text(pretty_name, "pretty_name")
    source_dataset = None if source_dataset is None else check_text(source_dataset, "source_dataset")
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise ValueError(f"compress_level must be an integer in 0..9, got {compress_level!r}")
    forbidden = check_tokens(forbidden)
    verdict = judge(attackers, bound=bound, level=level)
    if not verdict.passed and not allow_failed_audit:
        raise ExportRefused(f"export refused: the privacy audit failed — {verdict.reason}. Nothing was written. "
                            "(allow_failed_audit=True exports anyway for research, with a FAILED warning.)", verdict)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: not empty; pass overwrite=True to replace a previous export")
        if not _is_export(out):
            raise FileExistsError(f"{out}: not empty and not a previous export; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        n, (h, w) = len(images), images.shape[1:]
        counts = {name: int(c) for name, c in zip(LABELS, labels.sum(0).tolist())}
        parts = dict(n=n, image_shape=(h, w), label_counts=counts, attackers=attackers, utility=utility_rows,
                     settings=settings, verdict=verdict, source_dataset=source_dataset,
                     forbidden_checked=len(forbidden))
        _write_split(tmp, images, labels, compress_level, progress)
        (tmp / "README.md").write_text(render_card(**parts, pretty_name=pretty_name), encoding="utf-8")
        (tmp / "privacy.json").write_text(json.dumps(privacy_document(**parts), indent=2, ensure_ascii=False)
                                          + "\n", encoding="utf-8")
        _check_layout(tmp, n)
        if forbidden:
            leaks: list[Leak] = find_leaks(tmp, forbidden)
            if leaks:
                shown = "; ".join(f"{x.file} ({x.where}): {x.token!r}" for x in leaks[:10])
                raise ExportRefused(f"export refused: {len(leaks)} forbidden token occurrence(s) found — {shown}"
                                    f"{' …' if len(leaks) > 10 else ''}. Nothing was written.", verdict, leaks)
        stamp = int(time.time())
        for p in sorted(tmp.rglob("*"), reverse=True):   # files before their folders
            os.utime(p, (stamp, stamp))
        os.chmod(tmp, 0o755)       # mkdtemp creates 0700; a dataset folder is meant to be read
        os.utime(tmp, (stamp, stamp))
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(out_dir=out, n_images=n, verdict=verdict, forbidden_checked=len(forbidden))
