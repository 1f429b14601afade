"""``trichotomy release`` end to end on a file list whose names and ids are planted secrets.

The smoke profile's models (seconds to train) on 120 phantom patients written as PNGs under
recognisable names: the export must carry none of them, nor any per-sample seed, must load
as a Hugging Face imagefolder, and must be refused when its audit fails the bound.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from trichotomy_lib import config
from trichotomy_lib.data import generate_phantom
from trichotomy_lib.data.filelist import write_filelist
from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.export import ExportRefused, find_leaks
from trichotomy_lib.release_cli import forbidden_tokens, release_config, run_release
from trichotomy_lib.pipeline import Pipeline

SECRET = "ZQXSECRET"


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    """A data holder's folder: PNGs + a CSV file list, every name and id carrying SECRET."""
    root = tmp_path_factory.mktemp("holder")
    ds = generate_phantom(200, image_size=32, seed=5, site="a", max_scans=4)
    pids = np.array([f"{SECRET}-PATIENT-{i:04d}" for i in np.unique(ds.patient_ids, return_inverse=True)[1]])
    names = np.array([f"{SECRET}_{pid}/scan_{k:03d}.png" for k, pid in enumerate(pids)])
    for name, image in zip(names, ds.images):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / name)
    write_filelist(ImageSet(ds.images, ds.labels, pids, names), root / "list.csv")
    return root, set(pids.tolist()) | set(names.tolist())


@pytest.fixture(scope="module")
def exported(holder, tmp_path_factory):
    root, planted = holder
    work = tmp_path_factory.mktemp("work")
    report = run_release(work / "share", profile="smoke", filelist=str(root / "list.csv"), data_root=str(root),
                         run_root=str(work / "runs"), allow_failed_audit=True)
    pipe = Pipeline(release_config("smoke", str(root / "list.csv"), str(root), str(work / "runs")), verbose=False)
    return report, pipe, planted, work


def test_the_export_carries_no_link_to_a_source(exported):
    report, pipe, planted, _ = exported
    out = report.out_dir
    tokens = sorted(planted | set(forbidden_tokens(pipe)))
    assert any(SECRET in t for t in tokens) and any(t.isdigit() and len(t) > 10 for t in tokens)  # ids and seeds
    assert find_leaks(out, tokens) == []
    raw = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert SECRET.encode() not in raw and SECRET.lower().encode() not in raw.lower()
    names = [p.name for p in (out / "train").glob("*.png")]
    assert len(names) == report.n_images > 0 and all(re.fullmatch(r"[a-z]+\.png", n) for n in names)
    # the scanner is not blind: the private run directory holds the secrets
    release_dir = next((pipe.run_dir).glob("release_diadm_filter-*/diadm_filter"))
    assert find_leaks(release_dir, tokens)


def test_the_export_is_an_imagefolder_with_the_release_labels(exported):
    datasets = pytest.importorskip("datasets")
    report, pipe, _, _ = exported
    ds = datasets.load_dataset("imagefolder", data_dir=str(report.out_dir), split="train")
    assert len(ds) == report.n_images
    labels = np.array([[row[c] for c in ("No Finding", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                         "Pleural Effusion", "Pneumonia", "Pneumothorax")] for row in ds])
    from trichotomy_lib.stages.generate import load_release

    release, _ = load_release(pipe, "diadm_filter")
    assert sorted(map(tuple, labels)) == sorted(map(tuple, release.labels.astype(int)))


def test_verdict_matches_the_privacy_table_and_a_failed_audit_is_refused(exported):
    report, pipe, _, work = exported
    info = json.loads((report.out_dir / "privacy.json").read_text())
    card = (report.out_dir / "README.md").read_text()
    worst = report.verdict.risk_hi   # the strongest attacker's upper bound
    assert info["verdict"]["audit_passed"] == (worst <= 0.05) and info["exported_despite_failed_audit"] == (worst > 0.05)
    assert ("AUDIT FAILED" in card) == (not info["verdict"]["audit_passed"])
    if worst <= 0:
        pytest.skip("every attacker's upper bound is 0: no bound below it to refuse at")
    with pytest.raises(ExportRefused, match=r"risk upper bound .* > .*\(by "):
        run_release(work / "refused", profile="smoke", filelist=str(pipe.cfg["data"]["filelist"]),
                    data_root=pipe.cfg["data_root"], run_root=str(work / "runs"), bound=worst / 2)
    assert not (work / "refused").exists()


def test_real_data_runs_without_phantom_only_settings(holder, tmp_path):
    root, _ = holder
    cfg = release_config("default", str(root / "list.csv"), str(root), str(tmp_path))
    assert cfg["data"]["source"] == "filelist" and cfg["reid"]["extra_patients"] == 0
    assert "site" not in cfg["data"] and cfg["profile"] == "default-release"
    with pytest.raises(config.ConfigError, match="--data-root"):
        release_config("smoke", str(root / "list.csv"))


def test_filter_consistency_target_is_the_classifier_output_or_the_labels(holder, exported):
    """``generate.filter.consistency``: the filter ranks survivors against the classifier's output
    on the source image (the paper) or against the source's labels; the card says which."""
    from trichotomy_lib.release_cli import _settings
    from trichotomy_lib.stages.classifier import load_classifier
    from trichotomy_lib.stages.data import load_splits
    from trichotomy_lib.stages.generate import filter_models

    _, pipe, _, work = exported
    root = holder[0]
    train = load_splits(pipe)["train"]
    paper = filter_models(pipe, train)
    assert np.array_equal(paper.source_probs, load_classifier(pipe).predict_proba(train))
    cfg = config.deep_merge(release_config("smoke", str(root / "list.csv"), str(root), str(work / "runs")),
                            {"generate": {"filter": {"consistency": "labels"}}})
    by_labels = filter_models(Pipeline(cfg, verbose=False), train)
    assert np.array_equal(by_labels.source_probs, train.labels) and not np.array_equal(paper.source_probs, train.labels)
    assert by_labels.params["consistency"] == "labels"
    assert "source's labels" in _settings(Pipeline(cfg, verbose=False).cfg)["survivor chosen by"]
    assert "classifier's output" in _settings(pipe.cfg)["survivor chosen by"]
    with pytest.raises(config.ConfigError, match="filter.consistency must be one of"):
        Pipeline(config.deep_merge(cfg, {"generate": {"filter": {"consistency": "probs"}}}), verbose=False)
