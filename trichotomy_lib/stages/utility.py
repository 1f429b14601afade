"""Stages of the utility / fidelity / sweep evaluation (DESIGN steps 8–9).

* ``utility_real`` — the real row: predictions of the real-data classifier on the real test
  split (copied from stage ``classifier`` when ``utility.classifier`` is {}, else retrained with
  those overrides so every row has the same budget).
* ``utility_<release>`` — one per release (``edm_class``, ``diadm_raw``, ``diadm_filter``,
  ``diadm_filter_2nd``): the classifier trained on that release (source labels), epoch chosen on
  the real val split, predictions on the real test split. Changing one release recomputes only
  its row.
* ``utility_features`` — the fidelity feature network (``utility.features``) and its features of
  the real train and test splits.
* ``fidelity_<release>`` — Fréchet distance and IRS of the release in that feature space.
* ``utility_cross_site`` — one real-data classifier per dataset of ``utility.cross_site``, each
  tested on every dataset's test split.
* ``sweep`` — the guidance sweep (``evaluation/sweep.py``): per ``w``, raw DiADM samples →
  FD, IRS, auditor re-id rate, downstream AUROC. Each finished point is kept in the partial
  directory, so an interrupted sweep resumes.

Loaders (``utility_rows``, ``main_table``, ``fidelity_table``, ``cross_site_table``,
``load_sweep``) compute the tables from the cached artifacts (bootstrap CIs take seconds).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageset import ImageSet
from ..evaluation.classifier import Classifier
from ..evaluation.fidelity import FEATURE_SPACE_NOTE, fidelity_row, penultimate_features
from ..evaluation.sweep import sweep_config
from ..evaluation.utility import (cross_table, train_and_predict, training_config, utility_config, utility_row,
                                  utility_table)
from ..io import atomic_path, atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.reid_train import derive_seed
from .generate import RELEASE_STAGES, RELEASES

__all__ = ["RELEASE_LABELS", "utility_rows", "main_table", "fidelity_table", "cross_site_results",
           "cross_site_table", "load_sweep", "sweep_examples"]

RELEASE_LABELS = {"real": "real data", "edm_class": "EDM class-conditional", "diadm_raw": "DiADM raw (no filter)",
                  "diadm_filter": "DiADM + filter", "diadm_filter_2nd": "DiADM + filter + 2nd best"}
_CLF_KEYS = ("seed", "classifier", "utility.classifier")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _clf_cfg(ctx_or_pipe) -> dict:
    cfg = ctx_or_pipe.cfg if isinstance(ctx_or_pipe, Pipeline) else ctx_or_pipe.pipeline.cfg
    return training_config(cfg.get("classifier"), utility_config(cfg)["classifier"])


def _train_into(ctx: StageContext, train_set: ImageSet, seed: int, desc: str) -> None:
    """Fit on ``train_set``, select on real val, save classifier + test predictions + info."""
    from .data import load_splits

    splits = load_splits(ctx.pipeline, mmap=True)
    start = time.perf_counter()
    clf, probs = train_and_predict(train_set, splits["val"], splits["test"], _clf_cfg(ctx), seed,
                                   checkpoint_dir=ctx.out / "checkpoint")
    clf.save(ctx.out)
    _save_npy(ctx.out / "test_probs.npy", probs)
    atomic_write_json(ctx.out / "info.json", {"training_set": desc, "n_train": len(train_set), "seed": seed,
                                              "best_epoch": clf.best_epoch, "epochs_run": len(clf.history),
                                              "train_seconds": round(time.perf_counter() - start, 2)})
    shutil.rmtree(ctx.out / "checkpoint", ignore_errors=True)


# ------------------------------------------------------------------------------ main table
@stage("utility_real", keys=_CLF_KEYS, deps=("data", "classifier"), version=1)
def utility_real_stage(ctx: StageContext) -> None:
    """The real row: the reference classifier (or a retrained one at this step's budget)."""
    from .data import load_splits

    if not utility_config(ctx.pipeline.cfg)["classifier"]:
        src = ctx.inputs["classifier"]
        for name in ("classifier.safetensors", "classifier.json", "test_probs.npy"):
            shutil.copyfile(src / name, ctx.out / name)
        clf = Classifier.load(ctx.out, device="cpu")
        atomic_write_json(ctx.out / "info.json", {"training_set": "real (stage classifier)", "n_train": clf.info["n_train"],
                                                  "seed": clf.info["seed"], "best_epoch": clf.best_epoch,
                                                  "epochs_run": len(clf.history), "train_seconds": None})
        return
    _train_into(ctx, load_splits(ctx.pipeline, mmap=True)["train"], int(ctx.params["seed"]), "real (retrained)")


def _release_stage(name: str):
    def utility_release_stage(ctx: StageContext) -> None:
        from .generate import load_release

        release, _ = load_release(ctx.pipeline, name)
        _train_into(ctx, release, int(ctx.params["seed"]), name)

    utility_release_stage.__doc__ = f"Train the classifier on release {name!r} (source labels), test on real."
    utility_release_stage.__qualname__ = f"utility_release_stage[{name}]"
    return stage(f"utility_{name}", keys=_CLF_KEYS, deps=("data", RELEASE_STAGES[name]), version=1)(utility_release_stage)


for _name in RELEASES:
    _release_stage(_name)


def _stage_for(row: str) -> str:
    return "utility_real" if row == "real" else f"utility_{row}"


def utility_rows(pipe: Pipeline) -> dict:
    """{"rows": {row: utility_row}, "info": {row: info.json}} for "real" + ``utility.releases``
    (each trained on first use). CIs: ``utility.n_boot`` resamples of the test images, seeded by
    the profile's seed (the same resamples for every row: paired)."""
    from .data import load_splits

    u = utility_config(pipe.cfg)
    y_test = load_splits(pipe, mmap=True)["test"].labels
    seed = derive_seed(int(pipe.cfg["seed"]), "utility", "bootstrap")
    probs = {row: np.load(pipe.get(_stage_for(row)) / "test_probs.npy") for row in ["real", *u["releases"]]}
    rows, info = {}, {}
    for row, p in probs.items():
        rows[row] = utility_row(y_test, p, None if row == "real" else probs["real"], u["n_boot"], seed, u["level"])
        info[row] = json.loads((pipe.get(_stage_for(row)) / "info.json").read_text())
    return {"rows": rows, "info": info}


def main_table(pipe: Pipeline, result: dict | None = None) -> pd.DataFrame:
    """The paper's main table (display names; AUROC in points)."""
    result = result or utility_rows(pipe)
    return utility_table(result["rows"], RELEASE_LABELS, {k: v["n_train"] for k, v in result["info"].items()})


# ------------------------------------------------------------------------------ fidelity
@stage("utility_features", keys=(*_CLF_KEYS, "utility.features"), deps=("data", "classifier"), version=1)
def utility_features_stage(ctx: StageContext) -> None:
    """The fidelity feature network and its (N, D) features of the real train and test splits."""
    from .data import load_splits

    splits = load_splits(ctx.pipeline, mmap=True)
    if utility_config(ctx.pipeline.cfg)["features"] == "reference":
        clf = Classifier.load(ctx.inputs["classifier"])
    else:  # own seed: independent of the classifier that selected the filtered samples
        clf = train_and_predict(splits["train"], splits["val"], splits["test"], _clf_cfg(ctx),
                                derive_seed(int(ctx.params["seed"]), "utility", "features"),
                                checkpoint_dir=ctx.out / "checkpoint")[0]
        shutil.rmtree(ctx.out / "checkpoint", ignore_errors=True)
    clf.save(ctx.out)
    for split in ("train", "test"):
        _save_npy(ctx.out / f"{split}_features.npy", penultimate_features(clf, splits[split]))


def load_feature_net(pipe: Pipeline) -> tuple[Classifier, np.ndarray, np.ndarray]:
    """(feature classifier, train features, test features)."""
    path = pipe.get("utility_features")
    return Classifier.load(path), np.load(path / "train_features.npy"), np.load(path / "test_features.npy")


def sample_fd(pipe: Pipeline, samples) -> dict:
    """Fréchet distance of generated images ((N, 1, H, W) in [-1, 1]) to the real training split in
    the fidelity feature space (an independently seeded classifier, stage ``utility_features``:
    neither the pseudo-conditioning encoder nor the auditor), beside the real test split's own
    distance (``fd_test``, the floor at its size; FD grows as n shrinks, so compare like sizes)."""
    from ..data.imageset import LABELS, images_to_uint8
    from ..evaluation.stats import frechet_distance

    images = images_to_uint8(samples)
    n = len(images)
    as_set = ImageSet(images, np.zeros((n, len(LABELS)), np.uint8), np.full(n, "sample"),
                      np.array([f"sample_{i}" for i in range(n)]))
    feat_clf, train_f, test_f = load_feature_net(pipe)
    return {"n": n, "fd": frechet_distance(penultimate_features(feat_clf, as_set), train_f),
            "fd_test": frechet_distance(test_f, train_f), "n_test": len(test_f)}


def _fidelity_stage(name: str):
    def fidelity_release_stage(ctx: StageContext) -> None:
        from .generate import load_release

        release, _ = load_release(ctx.pipeline, name)
        clf, train_f, test_f = load_feature_net(ctx.pipeline)
        feats = penultimate_features(clf, release)
        _save_npy(ctx.out / "features.npy", feats)
        atomic_write_json(ctx.out / "fidelity.json", fidelity_row(feats, train_f, test_f,
                                                                     utility_config(ctx.pipeline.cfg)["alpha_e"]))

    fidelity_release_stage.__doc__ = f"Fréchet distance and IRS of release {name!r} in the utility feature space."
    fidelity_release_stage.__qualname__ = f"fidelity_release_stage[{name}]"
    return stage(f"fidelity_{name}", keys=("utility.alpha_e",), deps=("utility_features", RELEASE_STAGES[name]),
                 version=1)(fidelity_release_stage)


for _name in RELEASES:
    _fidelity_stage(_name)


def fidelity_table(pipe: Pipeline) -> pd.DataFrame:
    """One row per release (+ the real test split as reference): FD to train, IRS_α, IRS_∞ with
    bounds, adjusted IRS with bounds. Raw numbers (floats)."""
    u = utility_config(pipe.cfg)
    rows = {}
    for name in u["releases"]:
        rows[RELEASE_LABELS[name]] = json.loads((pipe.get(f"fidelity_{name}") / "fidelity.json").read_text())
    _, train_f, test_f = load_feature_net(pipe)
    ref = fidelity_row(test_f, train_f, test_f, u["alpha_e"])
    rows["real test split (reference)"] = {**ref, "fd": ref["fd_test"]}
    df = pd.DataFrame.from_dict(rows, orient="index")
    cols = ["n", "fd", "irs_alpha", "irs_inf", "irs_inf_lo", "irs_inf_hi", "at_cap", "irs_adjusted",
            "irs_adjusted_lo", "irs_adjusted_hi", "fd_test", "irs_real_inf"]
    df = df[cols]
    df.index.name = "release"
    return df


def feature_space_note(pipe: Pipeline) -> str:
    return FEATURE_SPACE_NOTE[utility_config(pipe.cfg)["features"]]


# ------------------------------------------------------------------------------ cross-dataset
@stage("utility_cross_site", keys=("seed", "data", "data_root", "classifier", "utility.classifier", "utility.cross_site",
                                   "utility.n_boot", "utility.level"),
       deps=("data", "utility_real"), version=1)
def utility_cross_site_stage(ctx: StageContext) -> None:
    """One real-data classifier per dataset, each tested on every dataset's test split."""
    from tqdm.auto import tqdm

    from ..data.build import build_dataset, validate_data_cfg
    from ..evaluation.classifier import evaluate_classifier
    from .data import load_splits

    u = utility_config(ctx.pipeline.cfg)
    seed = int(ctx.params["seed"])
    home = validate_data_cfg(ctx.params["data"])
    splits, models, homes = {}, {}, []
    for name, overrides in tqdm(u["cross_site"].items(), desc="cross-site datasets", leave=False):
        data_cfg = validate_data_cfg({**(ctx.params["data"] or {}), **overrides})
        if data_cfg == home:
            splits[name] = load_splits(ctx.pipeline, mmap=True)
            models[name] = Classifier.load(ctx.inputs["utility_real"])
            homes.append(name)
            continue
        splits[name] = build_dataset(data_cfg, ctx.params["data_root"], seed=seed)
        model_dir = ctx.out / "models" / name
        if (model_dir / "classifier.json").exists():  # finished before an interruption
            models[name] = Classifier.load(model_dir)
            continue
        models[name] = train_and_predict(splits[name]["train"], splits[name]["val"], splits[name]["test"],
                                         _clf_cfg(ctx), seed, checkpoint_dir=ctx.out / "checkpoint" / name)[0]
        models[name].save(model_dir)
        shutil.rmtree(ctx.out / "checkpoint" / name, ignore_errors=True)
    bseed = derive_seed(seed, "utility", "bootstrap")
    aurocs = {tr: {te: evaluate_classifier(models[tr], splits[te]["test"], u["n_boot"], bseed, u["level"])
                   .loc["mean", ["auroc", "lo", "hi"]].astype(float).to_dict() for te in splits} for tr in models}
    sizes = {name: {k: len(v) for k, v in s.items()} for name, s in splits.items()}
    shutil.rmtree(ctx.out / "checkpoint", ignore_errors=True)
    atomic_write_json(ctx.out / "cross_site.json", {"auroc": aurocs, "sizes": sizes, "home": homes,
                                                    "datasets": u["cross_site"]})


def cross_site_results(pipe: Pipeline) -> dict:
    """``cross_site.json``: {"auroc": {train: {test: {auroc, lo, hi}}}, "sizes", "home", "datasets"}."""
    return json.loads((pipe.get("utility_cross_site") / "cross_site.json").read_text())


def cross_site_table(pipe: Pipeline) -> pd.DataFrame:
    """Mean AUROC (points), rows = training dataset, columns = test dataset."""
    res = cross_site_results(pipe)
    return cross_table({tr: {te: v["auroc"] for te, v in row.items()} for tr, row in res["auroc"].items()})


# ------------------------------------------------------------------------------ guidance sweep
@stage("sweep", keys=("seed", "sweep", "generate.solver", "generate.steps", "generate.guide", "generate.batch_size",
                      "classifier", "utility.classifier", "utility.alpha_e", "utility.n_boot", "utility.level"),
       deps=("data", "encoder", "diffusion", "reid_auditor", "utility_features", "utility_real"), version=2)
def sweep_stage(ctx: StageContext) -> None:
    """Per guidance w: raw DiADM samples of a seeded subset of sources → FD, IRS, re-id, AUROC."""
    from tqdm.auto import tqdm

    from ..data.imageset import images_to_uint8
    from ..privacy import filter as flt
    from ..privacy.audit import EmbeddingCache, reid_audit
    from ..privacy.release import make_release
    from .data import load_splits
    from .encoder import load_embeddings
    from .generate import generate_config, make_sample_fn, source_indices
    from .reid import load_verifier

    pipe = ctx.pipeline
    s, u = sweep_config(pipe.cfg), utility_config(pipe.cfg)
    seed = int(ctx.params["seed"])
    splits = load_splits(pipe, mmap=True)
    train = load_splits(pipe)["train"]
    sources = source_indices(len(train), s["n_sources"], derive_seed(seed, "sweep", "sources"))
    seeds = flt.candidate_seed(flt.seed_stream(seed, "sweep"), sources, 0, 0)  # same seeds at every w
    sample_fn = make_sample_fn(pipe, generate_config(pipe.cfg), "pseudo", load_embeddings(pipe, "train"))
    feat_clf, train_f, test_f = load_feature_net(pipe)
    auditor = load_verifier(pipe, "auditor")
    embed = EmbeddingCache(auditor)
    real_probs = np.load(ctx.inputs["utility_real"] / "test_probs.npy")
    bseed = derive_seed(seed, "utility", "bootstrap")
    for w in tqdm(s["guidances"], desc="guidance sweep", leave=False):
        point = ctx.out / f"w_{w:g}"
        if (point / "point.json").exists():
            continue  # finished before an interruption
        start = time.perf_counter()
        images = images_to_uint8(sample_fn(sources, seeds, w))
        release = make_release(f"sweep_w{w:g}", images, sources, train)
        sample_seconds = time.perf_counter() - start
        fid = fidelity_row(penultimate_features(feat_clf, release), train_f, test_f, u["alpha_e"])
        # vs-all threshold calibrated on the val split's patients (never trained on), 5 % false alarms
        audit = reid_audit(release, sources, train, auditor, k=s["audit_k"], level=u["level"], embed=embed,
                           heldout=splits["val"], false_alarm=s["audit_false_alarm"])
        _, probs = train_and_predict(release, splits["val"], splits["test"], _clf_cfg(ctx), seed,
                                     checkpoint_dir=point / "checkpoint", progress=False)
        util = utility_row(splits["test"].labels, probs, real_probs, u["n_boot"], bseed, u["level"])
        shutil.rmtree(point / "checkpoint", ignore_errors=True)
        _save_npy(point / "examples.npy", images[:8])
        atomic_write_json(point / "point.json", {
            "guidance": w, "n": len(release), **{f"fid_{k}" if k in ("n",) else k: v for k, v in fid.items()},
            "auroc": util["auroc"]["mean"], "auroc_lo": util["lo"]["mean"], "auroc_hi": util["hi"]["mean"],
            "diff_points": util["diff_points"], "diff_lo": util["diff_lo"], "diff_hi": util["diff_hi"],
            **{k: audit[k] for k in ("src_rate", "src_lo", "src_hi", "all_rate", "all_lo", "all_hi")},
            "sample_seconds": round(sample_seconds, 2), "seconds": round(time.perf_counter() - start, 2)})
    atomic_write_json(ctx.out / "sweep.json", {"guidances": s["guidances"], "sources": sources.tolist(),
                                               "note": "raw DiADM sampler (no filter); same per-source seeds at every w"})


def load_sweep(pipe: Pipeline) -> pd.DataFrame:
    """One row per guidance w (sorted): FD, IRS (adjusted, with bounds), AUROC (with CI and Δ to
    real), auditor re-id rates vs source / vs any training patient (Wilson CIs), timings."""
    path = pipe.get("sweep")
    ws = json.loads((path / "sweep.json").read_text())["guidances"]
    rows = [json.loads((path / f"w_{w:g}" / "point.json").read_text()) for w in ws]
    return pd.DataFrame(rows).set_index("guidance").sort_index()


def sweep_examples(pipe: Pipeline) -> dict[float, np.ndarray]:
    """{w: (8, H, W) uint8} the first samples of each point (same sources and seeds)."""
    path = pipe.get("sweep")
    ws = json.loads((path / "sweep.json").read_text())["guidances"]
    return {w: np.load(path / f"w_{w:g}" / "examples.npy") for w in ws}
