"""The decoded-image cache: hits, keys, parallel == serial, atomic and resumable builds."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from trichotomy_lib.data import DataError, read_filelist
from trichotomy_lib.data import decode
from trichotomy_lib.data import image_cache as ic


@pytest.fixture()
def pngs(tmp_path):
    """30 PNGs of varied sizes/modes (gray, RGB, 16-bit, JPEG) under tmp_path/data, ChestX-ray14 names."""
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rels = []
    for k in range(30):
        rel = f"train/patient{k:05d}/study1/view1_frontal.jpg" if k % 7 == 3 else f"images/{k:08d}_000.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        h, w = (80, 90) if k == 24 else (20 + k % 5, 18 + (k * 3) % 11)  # k=24: a JPEG DCT-downscaled on decode
        if k % 5 == 1:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / rel)
        elif k % 5 == 2 and rel.endswith(".png"):
            Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(root / rel)
        else:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / rel)
        rels.append(rel)
    paths = [str(root / r) for r in rels]
    return root, rels, paths


def _list(root, rels, name="list.txt"):
    p = root / name
    p.write_text("".join(f"{r} {' '.join('1' if j == k % 8 else '0' for j in range(8))}\n" for k, r in enumerate(rels)))
    return p


def _key(root, rels, size=16, digest="abc"):
    return ic.cache_key(filelist_sha256=digest, data_root=root, image_size=size, names=rels)


def test_parallel_equals_serial(pngs):
    _, _, paths = pngs
    serial = ic.decode_images(paths, 16, workers=1, progress=False)
    threads = ic.decode_images(paths, 16, workers=4, progress=False)
    procs = ic.decode_images(paths, 16, workers=2, backend="process", progress=False)
    np.testing.assert_array_equal(serial, threads)
    np.testing.assert_array_equal(serial, procs)
    assert serial.shape == (30, 16, 16) and serial.dtype == np.uint8


def test_cached_equals_in_memory_and_hits(pngs, tmp_path, monkeypatch):
    root, rels, paths = pngs
    serial = ic.decode_images(paths, 16, workers=1, progress=False)
    info = {}
    mm = ic.cached_decode(paths, 16, tmp_path / "cache", _key(root, rels), workers=3, batch=7, progress=False, info=info)
    assert not info["cache_hit"] and isinstance(mm, np.memmap) and not mm.flags.writeable
    np.testing.assert_array_equal(mm, serial)
    files = sorted(os.listdir(tmp_path / "cache"))
    assert [f for f in files if "partial" in f] == []  # nothing half-written left behind

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(decode, "_decode_at", no_decode)
    info = {}
    again = ic.cached_decode(paths, 16, tmp_path / "cache", _key(root, rels), progress=False, info=info)
    assert info["cache_hit"]
    np.testing.assert_array_equal(again, serial)


def test_key_changes_with_list_root_size_and_names(pngs, tmp_path):
    root, rels, _ = pngs
    base = _key(root, rels)
    assert base == _key(root, list(rels))  # deterministic
    assert _key(root, rels, digest="abd") != base  # list content
    assert _key(root, rels, size=32) != base  # image size
    assert _key(tmp_path, rels) != base  # data root
    assert _key(root, rels[::-1]) != base  # order of rows
    assert _key(root, rels[:-1]) != base  # a dropped row
    assert ic.cache_key(filelist_sha256="abc", data_root=root, image_size=16, names=rels, min_side=1) != base


def test_read_filelist_cache_follows_list_and_size(pngs, tmp_path):
    root, rels, _ = pngs
    p = _list(root, rels)
    cache = tmp_path / "run"
    infos = [{} for _ in range(4)]
    a = read_filelist(p, root, 16, progress=False, cache_dir=cache, info=infos[0])
    read_filelist(p, root, 16, progress=False, cache_dir=cache, info=infos[1])
    b = read_filelist(p, root, 12, progress=False, cache_dir=cache, info=infos[2])
    _list(root, rels[:20])  # the list changes
    c = read_filelist(p, root, 16, progress=False, cache_dir=cache, info=infos[3])
    assert [i["cache_hit"] for i in infos] == [False, True, False, False]
    assert len({i["cache"] for i in infos}) == 3
    assert b.images.shape == (30, 12, 12)
    np.testing.assert_array_equal(c.images, a.images[:20])


def test_edited_image_invalidates_cache(pngs, tmp_path):
    root, rels, paths = pngs
    key = _key(root, rels)
    ic.cached_decode(paths, 16, tmp_path, key, progress=False)
    Image.fromarray(np.full((24, 24), 200, np.uint8)).save(paths[5])
    os.utime(paths[5], ns=(1, 1))  # a different mtime even on coarse-clock filesystems
    info = {}
    mm = ic.cached_decode(paths, 16, tmp_path, key, progress=False, info=info)
    assert not info["cache_hit"] and (mm[5] == 200).all()
    trusting = {}
    ic.cached_decode(paths, 16, tmp_path, key, progress=False, check_files=False, info=trusting)
    assert trusting["cache_hit"]  # check_files=False trusts the key alone


def test_incomplete_cache_is_never_trusted(pngs, tmp_path):
    root, rels, paths = pngs
    key = _key(root, rels)
    mm = ic.cached_decode(paths, 16, tmp_path, key, progress=False)
    expected = np.array(mm)
    del mm
    (tmp_path / f"images-{key}.json").unlink()  # e.g. killed between the two commit steps
    info = {}
    np.testing.assert_array_equal(ic.cached_decode(paths, 16, tmp_path, key, progress=False, info=info), expected)
    assert not info["cache_hit"]
    # A truncated data file under the final name is not mapped either.
    final = tmp_path / f"images-{key}.npy"
    final.write_bytes(final.read_bytes()[:1000])
    info = {}
    np.testing.assert_array_equal(ic.cached_decode(paths, 16, tmp_path, key, progress=False, info=info), expected)
    assert not info["cache_hit"]


def test_interrupted_build_leaves_no_cache_and_resumes(pngs, tmp_path):
    root, rels, paths = pngs
    key = _key(root, rels)
    expected = ic.decode_images(paths, 16, workers=1, progress=False)
    with open(paths[17], "rb") as f:
        good = f.read()
    with open(paths[17], "wb") as f:
        f.write(b"not an image")  # row 17 fails: batches 0..13 are done (batch 7)
    with pytest.raises(DataError, match=r"line 18: cannot read image"):
        ic.cached_decode(paths, 16, tmp_path, key, batch=7, workers=2, progress=False,
                         where=[f"line {i + 1}" for i in range(30)])
    assert not (tmp_path / f"images-{key}.npy").exists()
    state = json.loads((tmp_path / f"images-{key}.partial.json").read_text())
    assert state["done"] == 14
    with open(paths[17], "wb") as f:
        f.write(good)
    info = {}
    mm = ic.cached_decode(paths, 16, tmp_path, key, batch=7, workers=2, progress=False, info=info)
    assert info["resumed_rows"] == 14 and not info["cache_hit"]
    np.testing.assert_array_equal(mm, expected)
    assert not (tmp_path / f"images-{key}.partial.npy").exists()
    assert not (tmp_path / f"images-{key}.partial.json").exists()


def test_resume_redoes_batches_whose_files_changed(pngs, tmp_path):
    root, rels, paths = pngs
    key = _key(root, rels)
    os.remove(paths[20])
    with pytest.raises(DataError, match="not found"):  # found by the stat pass, before any decoding
        ic.cached_decode(paths, 16, tmp_path, key, batch=7, progress=False)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(paths[20])
    with open(paths[25], "wb") as f:
        f.write(b"broken")
    with pytest.raises(DataError):
        ic.cached_decode(paths, 16, tmp_path, key, batch=7, progress=False)  # rows 0..20 done
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(paths[25])
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(paths[3])  # batch 0 changed meanwhile
    os.utime(paths[3], ns=(2, 2))
    info = {}
    mm = ic.cached_decode(paths, 16, tmp_path, key, batch=7, progress=False, info=info)
    assert info["resumed_rows"] == 0 and (mm[3] == 7).all() and (mm[25] == 9).all()


def test_take_rows(tmp_path):
    src = np.random.default_rng(0).integers(0, 256, (50, 4, 4), dtype=np.uint8)
    idx = np.array([1, 4, 5, 30, 49])
    out = ic.take_rows(src, idx, tmp_path / "part.npy", batch=2, progress=False)
    np.testing.assert_array_equal(out, src[idx])
    assert sorted(os.listdir(tmp_path)) == ["part.npy"]


def test_min_image_side():
    assert [ic.min_image_side(s) for s in (16, 32, 33, 512)] == [8, 16, 17, 256]


def test_failed_rebuild_of_stale_cache_leaves_nothing_trusted(pngs, tmp_path):
    root, rels, paths = pngs
    key = _key(root, rels)
    ic.cached_decode(paths, 16, tmp_path, key, progress=False)
    with open(paths[5], "wb") as f:
        f.write(b"broken")  # stale now, and the rebuild fails
    with pytest.raises(DataError, match="cannot read image"):
        ic.cached_decode(paths, 16, tmp_path, key, progress=False)
    assert not (tmp_path / f"images-{key}.npy").exists() and not (tmp_path / f"images-{key}.json").exists()
