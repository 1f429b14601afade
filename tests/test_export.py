"""Release for sharing (trichotomy_lib/export): unlinkability, imagefolder round trip, refusal, atomicity.

The leak test plants recognisable ids, names, seeds and indices in a release and scans every byte of its export."""

from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from trichotomy_lib.data.imageset import LABELS, ImageSet
from trichotomy_lib.export import (NAME_ALPHABET, THIS_RELEASE, ExportRefused, attacker_rows, export_release,
                                   find_leaks, judge, png_chunks, utility_rows)
from trichotomy_lib.export import imagefolder
from trichotomy_lib.export.tables import check_privacy
from trichotomy_lib.privacy.release import load_release_dir, make_release, save_release

N, SIZE = 40, 16
SETTINGS = {"sampler": "edm-heun", "steps": 32, "guidance": 1.2, "K": 16,
            "veto": {"defender_prob": 0.5, "nn_quantile": 0.05}, "retry": {"guidance_step": 0.1, "max_retries": 7}}


def attacker(name, risk_hi, weight=1e-4, risk=None, **extra):
    risk = min(risk_hi, 0.01) if risk is None else risk
    return {"attacker": name, "weight": weight, "attack_rate": 0.02, "attack_lo": 0.008, "attack_hi": 0.05,
            "control_rate": 0.015, "control_lo": 0.005, "control_hi": 0.043,
            "risk": risk, "risk_lo": 0.0, "risk_hi": risk_hi, **extra}


PRIVACY = [attacker("auditor-ball", 0.021, n_predicates=200, n_population=400),
           attacker("auditor-verdict", 0.012, weight=1.1e-4),
           attacker("pixel-ball", 0.034, n_predicates=200, n_population=400)]
UTILITY = [{"training_set": THIS_RELEASE, "mean_auroc": 0.841, "mean_auroc_lo": 0.832, "mean_auroc_hi": 0.850,
            "delta_points": -0.6, "delta_lo": -1.3, "delta_hi": 0.1, "n_train": N},
           {"training_set": "real data", "mean_auroc": 0.847, "mean_auroc_lo": 0.838, "mean_auroc_hi": 0.856,
            "n_train": 120}]


def export(out, images, labels, privacy=PRIVACY, **kw):
    return export_release(out, images, labels, privacy, UTILITY, SETTINGS, progress=False, **kw)


def random_release(n=N, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.eye(8, dtype=np.uint8)[rng.integers(0, 8, n)]
    labels[: n // 4, 1] = 1                      # some multi-label rows
    return rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8), labels


def rows_of(images, labels):    # (pixels, labels) pairs as a sorted list: a multiset
    return sorted((im.tobytes(), tuple(int(v) for v in lab)) for im, lab in zip(images, labels))


# ----------------------------------------------------------------------------- (a) leaks
@pytest.fixture
def planted_release(tmp_path):
    """A release directory (the project's format) full of recognisable identifying strings."""
    rng, n_train = np.random.default_rng(7), 60
    pids = np.array([f"PATIENT_0xDEADBEEF_{i // 2}" for i in range(n_train)])
    names = np.array([f"images/{i + 6:08d}_{i % 2:03d}.png" for i in range(n_train)])   # ChestX-ray14 style
    train = ImageSet(rng.integers(0, 256, (n_train, SIZE, SIZE), dtype=np.uint8),
                     np.eye(8, dtype=np.uint8)[rng.integers(0, 8, n_train)], pids, names)
    source_index = rng.permutation(n_train)[:N]
    seeds = 1234567890123 + np.arange(N, dtype=np.int64)
    release = make_release("release_LEAKCANARY_w1.2", rng.integers(0, 256, (N, SIZE, SIZE), dtype=np.uint8),
                           source_index, train)
    audit = pd.DataFrame({"source_index": source_index, "patient_id": pids[source_index],
                          "source_name": names[source_index], "seed": seeds, "decision": "kept"})
    directory = save_release(tmp_path / "release_LEAKCANARY_dir", release, source_index, audit)
    tokens = {*pids, *names, *(n.split("/")[-1] for n in names), *(n[7:15] for n in names), *release.names,
              *(str(s) for s in seeds), *(s.tobytes() for s in seeds), source_index.astype(np.int64).tobytes(),
              ",".join(map(str, source_index)), "LEAKCANARY", b"\x93NUMPY", "source_index", "source_name",
              "patient_id", str(tmp_path)}
    return directory, sorted(tokens, key=repr)


def test_export_carries_nothing_that_links_to_a_source(tmp_path, planted_release):
    directory, tokens = planted_release
    release, source_index = load_release_dir(directory)
    planted = {x.token for x in find_leaks(directory, tokens)}       # the scanner sees them in the release
    assert {*release.patient_ids, *release.names, "1234567890123", source_index.tobytes(), b"\x93NUMPY"} <= planted
    report = export(out := tmp_path / "shared", release.images, release.labels, forbidden=tokens)
    assert report.forbidden_checked == len(tokens) and report.verdict.passed
    assert find_leaks(out, tokens) == []
    assert f"scanned for {len(tokens)} identifying strings" in report.readme.read_text()

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    pngs = [f for f in files if f.endswith(".png")]
    assert set(files) - set(pngs) == {"README.md", "privacy.json", "train/metadata.csv"} and len(pngs) == N
    assert all(re.fullmatch(rf"train/[{NAME_ALPHABET}]{{32}}\.png", f) for f in pngs)
    assert len({(out / f).stat().st_mtime for f in files}) == 1          # no write order in timestamps
    for f in pngs:                                                        # no metadata chunks
        assert [k for k, _ in png_chunks((out / f).read_bytes())] == [b"IHDR", b"IDAT", b"IEND"]
        with Image.open(out / f) as im:
            assert im.info == {} and im.mode == "L"

    # rows are in random order: map each exported image back to its input row (test only)
    where = {im.tobytes(): i for i, im in enumerate(release.images)}
    order = [where[np.asarray(Image.open(out / "train" / f)).tobytes()]
             for f in pd.read_csv(out / "train" / "metadata.csv")["file_name"]]
    assert sorted(order) == list(range(N)) and order != list(range(N)) and order != sorted(order, reverse=True)
    # names are fresh on every export of the same data
    again = export(tmp_path / "again", release.images, release.labels)
    names = lambda d: {p.name for p in (d / "train").glob("*.png")}
    assert not names(out) & names(again.out_dir)


def test_find_leaks_finds_planted_tokens_wherever_they_hide(tmp_path):
    root = tmp_path / "x"
    (root / "sub").mkdir(parents=True)
    (root / "README.md").write_text("nothing here but Patient_0xdeadbeef_17 in another case\n")
    (root / "sub" / "PATIENT_0xDEADBEEF_99.txt").write_text("clean")
    (root / ".hidden").write_bytes(b"\x00\x01" + (1234567890123).to_bytes(8, "little") + b"\x02")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "zipped images/00000006_000.png", zip=True)          # zTXt
    info.add_itxt("Source", "itxt 00000042_001.png", zip=True)                    # compressed iTXt
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "meta.png", pnginfo=info)
    row = b"\x00" + b"PIXELTOKEN_31337" + bytes(range(16))                      # filter 0 + 32 pixels
    ihdr = struct.pack(">IIBBBBB", 32, 1, 8, 0, 0, 0, 0)
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
    (root / "pixels.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row)))
    np.save(root / "names.npy", np.array(["release/images/00000077_000.png"]))   # numpy strings: UTF-32
    tokens = ["PATIENT_0xDEADBEEF_17", "PATIENT_0xDEADBEEF_99", (1234567890123).to_bytes(8, "little"),
              "images/00000006_000.png", "00000042_001", "PIXELTOKEN_31337", "images/00000077_000.png", "NEVER_SEEN"]
    found = {(leak.file, leak.token, leak.where) for leak in find_leaks(root, tokens)}
    assert ("README.md", "PATIENT_0xDEADBEEF_17", "bytes") in found                 # case-insensitive
    assert ("sub/PATIENT_0xDEADBEEF_99.txt", "PATIENT_0xDEADBEEF_99", "path") in found
    assert (".hidden", tokens[2], "bytes") in found
    assert ("meta.png", "images/00000006_000.png", "zTXt") in found
    assert ("meta.png", "00000042_001", "iTXt") in found
    assert ("pixels.png", "PIXELTOKEN_31337", "IDAT") in found
    assert ("names.npy", "images/00000077_000.png", "bytes") in found
    assert not any(t == "NEVER_SEEN" for _, t, _ in found)
    # and in a real export: one planted byte string in the card is found
    out = export(tmp_path / "shared", *random_release()).out_dir
    assert find_leaks(out, ["PATIENT_0xDEADBEEF_17"]) == []
    (out / "README.md").write_text((out / "README.md").read_text() + "source: patient_0xDEADBEEF_17\n")
    assert [(x.file, x.where, x.encoding) for x in find_leaks(out, ["PATIENT_0xDEADBEEF_17"])] == [
        ("README.md", "bytes", "utf-8")]
    pytest.raises(ValueError, find_leaks, out, ["abc"]).match("3 bytes")


def test_export_refuses_when_a_forbidden_token_appears(tmp_path):
    settings = {**SETTINGS, "note": "trained on PATIENT_0xDEADBEEF_17"}
    with pytest.raises(ExportRefused, match=r"README\.md.*PATIENT_0xDEADBEEF_17") as e:
        export_release(tmp_path / "out", *random_release(), PRIVACY, UTILITY, settings, progress=False,
                       forbidden=["PATIENT_0xDEADBEEF_17"], allow_failed_audit=True)
    assert e.value.leaks and not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- (b) round trip
def test_imagefolder_round_trip_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `test` extra installs datasets")
    images, labels = random_release()
    out = export(tmp_path / "shared", images, labels).out_dir
    for ds in (datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "cache")),
               datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache2"))):   # as from the Hub
        train = ds["train"]
        assert list(ds) == ["train"] and train.num_rows == N and train.column_names == ["image", *LABELS]
        got_images = np.stack([np.asarray(im) for im in train["image"]])
        got_labels = np.stack([train[c] for c in LABELS], axis=1)
        assert got_images.dtype == np.uint8 and set(np.unique(got_labels)) <= {0, 1}
        assert rows_of(got_images, got_labels) == rows_of(images, labels)


# ----------------------------------------------------------------------------- (c) refusal
def test_failed_audit_is_refused_and_nothing_is_written(tmp_path):
    failing = PRIVACY[:2] + [attacker("pixel-ball", 0.2, risk=0.12)]
    with pytest.raises(ExportRefused, match=re.escape("pixel-ball: risk upper bound 0.2 > 0.05 (by 0.15)")) as e:
        export(tmp_path / "out", *random_release(), privacy=failing)
    assert e.value.verdict.strongest == "pixel-ball" and e.value.verdict.failures[0].excess == pytest.approx(0.15)
    assert "auditor" not in str(e.value) and list(tmp_path.iterdir()) == []   # only failing attackers are named
    (existing := tmp_path / "kept").mkdir()
    with pytest.raises(ExportRefused):
        export(existing, *random_release(), privacy=failing)
    assert list(existing.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["kept"]

    report = export(tmp_path / "research", *random_release(), privacy=failing, allow_failed_audit=True)
    card = report.readme.read_text()
    head = card.split("\n\n# ")[0]              # everything before the title
    assert "THE PRIVACY AUDIT FAILED" in card.splitlines()[1] and "NOT SHOWN TO BE PSO-SECURE" in head
    assert "pixel-ball: risk upper bound 0.2 > 0.05 (by 0.15)" in head
    doc = json.loads(report.privacy_json.read_text())
    assert doc["verdict"]["audit_passed"] is False and doc["exported_despite_failed_audit"] is True


def test_verdict_and_card_numbers(tmp_path):
    v = judge(check_privacy(PRIVACY))
    assert v.passed and v.strongest == "pixel-ball" and v.risk_hi == 0.034
    assert v.sentence == ("No attacker tested singles out a patient beyond chance at predicate weights 1.0e-04 to "
                          "1.1e-04; risk ≤ 0.034 at 95 % confidence (strongest attacker: pixel-ball).")
    assert judge(check_privacy([attacker("a", 0.05)])).passed and not judge(check_privacy([attacker("a", 0.05)]),
                                                                           bound=0.04).passed   # inclusive bound
    report = export(tmp_path / "shared", *random_release())
    card = report.readme.read_text()
    assert card.startswith("---\nlicense: other") and "task_categories:\n- image-classification" in card
    assert v.sentence in card and "| pixel-ball | 1.0e-04 | 0.020 [0.008, 0.050] |" in card
    assert all(f"| {row['attacker']} |" in card for row in PRIVACY)
    assert "84.1 [83.2, 85.0]" in card and "| guidance | 1.2 |" in card and "| veto.defender_prob | 0.5 |" in card
    doc = json.loads(report.privacy_json.read_text())
    assert [r["attacker"] for r in doc["attackers"]] == [r["attacker"] for r in PRIVACY]
    assert doc["attackers"][2]["risk_hi"] == 0.034 and doc["settings"]["retry.max_retries"] == 7
    assert doc["label_counts"] == dict(zip(LABELS, random_release()[1].sum(0).tolist()))


# ----------------------------------------------------------------------------- (d) atomicity
def test_a_failure_mid_write_leaves_no_out_dir(tmp_path, monkeypatch):
    real, calls = imagefolder._write_png, []

    def flaky(path, image, level):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full (injected)")
        real(path, image, level)

    monkeypatch.setattr(imagefolder, "_write_png", flaky)
    with pytest.raises(OSError, match="injected"):
        export(tmp_path / "out", *random_release())
    assert list(tmp_path.iterdir()) == []
    # a previous export is kept intact when its replacement fails
    monkeypatch.setattr(imagefolder, "_write_png", real)
    first = export(tmp_path / "out", *random_release(seed=1)).out_dir
    contents = lambda: {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    before = contents()
    calls.clear()
    monkeypatch.setattr(imagefolder, "_write_png", flaky)
    with pytest.raises(OSError, match="injected"):
        export(first, *random_release(seed=2), overwrite=True)
    assert contents() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_folders_are_protected(tmp_path):
    out = export(tmp_path / "out", *random_release()).out_dir
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export(out, *random_release(seed=3))
    assert len(list((export(out, *random_release(seed=3), overwrite=True).out_dir / "train").glob("*.png"))) == N
    (other := tmp_path / "my_documents").mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a previous export"):
        export(other, *random_release(), overwrite=True)
    assert (other / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_documents", "out"]


# ----------------------------------------------------------------------------- (e) bad input
@pytest.mark.parametrize("change, field", [
    (lambda im, lab: (im, np.where(lab == 1, 2, lab)), "labels"),
    (lambda im, lab: (im, lab[:-1]), "labels"),
    (lambda im, lab: (im, lab[:, :7]), "labels"),
    (lambda im, lab: (im.astype(np.float32), lab), "images"),
    (lambda im, lab: (im[..., None], lab), "images"),
])
def test_bad_images_or_labels_name_the_field(tmp_path, change, field):
    with pytest.raises(ValueError, match=field):
        export(tmp_path / "out", *change(*random_release()))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("privacy, message", [
    ([attacker("pixel-ball", float("nan"), risk=0.01)], r"pixel-ball\): risk_hi: is nan"),
    (pd.DataFrame([attacker("pixel-ball", 0.01)]).assign(control_lo=np.nan), r"control_lo: is nan"),
    ([{**attacker("a", 0.01), "patient_id": "x"}], r"unknown field\(s\) \['patient_id'\]"),
    ([{k: v for k, v in attacker("a", 0.01).items() if k != "weight"}], r"missing field\(s\) \['weight'\]"),
    ([attacker("a", 0.01, weight=1.5)], r"weight: 1.5 is outside \[0"),
    ([attacker("a", 0.01, risk=0.3)], r"risk_lo <= risk <= risk_hi"),
    ([attacker("a", 0.01), attacker("a", 0.02)], "duplicate attacker"),
    ([], "no attacker rows"),
])
def test_bad_privacy_tables_name_the_field(tmp_path, privacy, message):
    with pytest.raises(ValueError, match=message):
        export(tmp_path / "out", *random_release(), privacy=privacy)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("utility, settings, kw, error, message", [
    (UTILITY, {"seeds": list(range(40))}, {}, ValueError, r"settings.seeds: a list of 40"),
    (UTILITY, {"guidance": float("nan")}, {}, ValueError, r"settings.guidance: is nan"),
    (UTILITY[1:], SETTINGS, {}, ValueError, "no row with training_set == 'this release'"),
    ([{**UTILITY[0], "mean_auroc": 84.1}], SETTINGS, {}, ValueError, r"mean_auroc: 84.1 is outside"),
    (UTILITY, SETTINGS, {"bound": 0}, ValueError, r"bound must be in \(0, 1\]"),
    (UTILITY, SETTINGS, {"forbidden": [17]}, TypeError, "str or bytes"),
])
def test_bad_settings_utility_and_options(tmp_path, utility, settings, kw, error, message):
    with pytest.raises(error, match=message):
        export_release(tmp_path / "out", *random_release(), PRIVACY, utility, settings, **kw)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- adapters
def test_adapters_from_evaluation_outputs():
    row = {"release": "diadm", "pso_risk_hi": 0.9, "pso_kind": "ball"}
    for kind, hi in (("verifier", 0.01), ("ball", 0.02)):
        row.update({f"{kind}_{k}": v for k, v in attacker(kind, hi).items() if k != "attacker"})
        row.update({f"{kind}_n_predicates": 200, f"{kind}_correct_rate": 0.0, f"{kind}_warning": None})
    rows = attacker_rows(row, names={"ball": "auditor-ball"})
    assert [r["attacker"] for r in rows] == ["verifier", "auditor-ball"]
    assert "correct_rate" not in rows[0] and check_privacy(rows)[1]["risk_hi"] == 0.02
    util = {name: {"auroc": {"mean": m}, "lo": {"mean": m - 0.01}, "hi": {"mean": m + 0.01},
                   "diff_points": d, "diff_lo": 2 * d, "diff_hi": 0.0} for name, m, d in (("syn", 0.84, -0.5),
                                                                                            ("real", 0.845, 0.0))}
    rows = utility_rows(util, release="syn", labels={"real": "real data"}, n_train={"syn": 10})
    assert rows[0]["training_set"] == THIS_RELEASE and rows[0]["delta_points"] == -0.5 and rows[0]["n_train"] == 10
    assert rows[1] == {"training_set": "real data", "mean_auroc": 0.845, "mean_auroc_lo": 0.845 - 0.01,
                       "mean_auroc_hi": 0.845 + 0.01}
