"""Stages of the downstream-utility evaluation (DESIGN step 8): train on a set, test on real.

* ``utility_real`` — the real row: predictions of the real-data classifiers on the real test
  split (seed 0 copied from stage ``classifier`` when ``utility.classifier`` is {}, else
  retrained with those overrides so every row has the same budget).
* ``utility_<release>`` — one per generated release (``releases.RELEASES``): the classifiers
  trained on that release (source labels), epoch chosen on the real val split, predictions on
  the real test split. Changing one release recomputes only its row. Under
  ``utility.equal_steps`` a release's epochs are scaled to the real split's optimiser steps.

Every row trains ``utility.seeds`` classifiers: seed 0 is the profile's seed, seed ``s > 0``
is ``seeds.derive(seed, "utility", "classifier", s)`` — the same seeds in every row, so the
difference to real is paired over seeds too. Each finished seed is kept in the stage's
partial directory, so an interrupted row resumes at the next seed.
* ``utility_cross_site`` — one real-data classifier per dataset of ``utility.cross_site``, each
  tested on every dataset's test split.

Each stage writes ``test_probs.npy`` ((seeds, N_test, 8)), the seed-0 classifier and
``info.json``; the tables are built from them by ``analysis.utility``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import seeds
from ..config import register_section
from ..data.build import build_dataset, validate_data_cfg
from ..data.imageset import ImageSet
from ..evaluation.classifier import Classifier, evaluate_classifier
from ..evaluation.utility import equal_step_epochs, train_and_predict, training_config, utility_config
from ..io import atomic_path, atomic_write_json
from ..jobs import run_jobs
from ..pipeline import Pipeline, StageContext, stage
from ..releases import REAL, RELEASES
from .data import load_splits
from .generate import load_release

register_section("utility")(utility_config)

CLASSIFIER_KEYS = ("seed", "classifier", "utility.classifier")
ROW_KEYS = (*CLASSIFIER_KEYS, "utility.seeds")
RELEASE_ROW_KEYS = (*ROW_KEYS, "utility.equal_steps")


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def classifier_recipe(cfg) -> dict:
    """The recipe of every classifier this step trains: ``classifier`` with ``utility.classifier`` on top."""
    return training_config(cfg["classifier"], cfg["utility"]["classifier"])


def row_seed(seed: int, index: int) -> int:
    """Classifier seed ``index`` of every utility row (0: the profile's seed)."""
    return int(seed) if index == 0 else seeds.derive(int(seed), "utility", "classifier", index)


def fit_seed(train_set: ImageSet, val_set: ImageSet, test_set: ImageSet, recipe: dict, seed: int,
             done: Path, progress: bool = True) -> None:
    """One classifier seed of a row → ``done/`` (classifier, test_probs.npy, info.json last).

    A job of ``jobs.run_jobs``: its own checkpoint folder beside ``done``."""
    checkpoint = done.parent / f"checkpoint-{done.name}"
    start = time.perf_counter()
    clf, p = train_and_predict(train_set, val_set, test_set, recipe, seed, checkpoint_dir=checkpoint,
                                progress=progress)
    seconds = round(time.perf_counter() - start, 2)
    clf.save(done)
    save_npy(done / "test_probs.npy", p)
    atomic_write_json(done / "info.json", {"seed": seed, "best_epoch": clf.best_epoch, "epochs_run": len(clf.history),
                                           "train_seconds": seconds})
    shutil.rmtree(checkpoint, ignore_errors=True)


def row_recipe(cfg, n_train: int, n_real: int) -> dict:
    """The classifier recipe of a row of ``n_train`` images: ``classifier_recipe``, with its epochs
    scaled to the real split's optimiser steps (``equal_step_epochs``) under ``utility.equal_steps``."""
    recipe = classifier_recipe(cfg)
    if cfg["utility"]["equal_steps"]:
        recipe = {**recipe, "epochs": equal_step_epochs(recipe["epochs"], n_real, n_train)}
    return recipe


def _train_into(ctx: StageContext, train_set: ImageSet, desc: str, first: Path | None = None,
                recipe: dict | None = None) -> None:
    """Fit ``utility.seeds`` classifiers on ``train_set`` (each selected on real val); save the
    seed-0 classifier, the (S, N, 8) test predictions and ``info.json``. The seeds are
    independent jobs (``jobs.run_jobs``: side by side on CPU cores); each finished seed is kept,
    so an interrupted row resumes with the seeds it lacks.

    first: seed 0 already trained elsewhere: the folder with its classifier and test_probs.npy.
    recipe: the classifier recipe (default ``classifier_recipe``).
    """
    recipe = classifier_recipe(ctx.config) if recipe is None else recipe
    splits = load_splits(ctx.pipeline, mmap=True)
    seed, n_seeds = int(ctx.config["seed"]), int(ctx.config["utility.seeds"])
    folders = [ctx.out / "seeds" / str(index) for index in range(n_seeds)]
    if first is not None and not (folders[0] / "info.json").exists():
        folders[0].mkdir(parents=True, exist_ok=True)
        for name in ("classifier.safetensors", "classifier.json", "test_probs.npy"):
            shutil.copyfile(first / name, folders[0] / name)
        clf = Classifier.load(folders[0], device="cpu")
        atomic_write_json(folders[0] / "info.json", {"seed": row_seed(seed, 0), "best_epoch": clf.best_epoch,
                                                     "epochs_run": len(clf.history), "train_seconds": None})
    todo = [index for index, done in enumerate(folders) if not (done / "info.json").exists()]
    run_jobs(fit_seed, [(train_set, splits["val"], splits["test"], recipe, row_seed(seed, index),
                         folders[index]) for index in todo], desc=f"{desc}: classifier seeds")
    probs = [np.load(done / "test_probs.npy", allow_pickle=False) for done in folders]
    runs = [json.loads((done / "info.json").read_text()) for done in folders]
    for name in ("classifier.safetensors", "classifier.json"):
        shutil.copyfile(folders[0] / name, ctx.out / name)
    save_npy(ctx.out / "test_probs.npy", np.stack(probs))
    atomic_write_json(ctx.out / "info.json", {
        "training_set": desc, "n_train": len(train_set), "seed": seed, "epochs": recipe.get("epochs"),
        "label_counts": np.asarray(train_set.labels).sum(0).astype(int).tolist(),
        "seeds": [r["seed"] for r in runs], "best_epoch": [r["best_epoch"] for r in runs],
        "epochs_run": [r["epochs_run"] for r in runs], "train_seconds": [r["train_seconds"] for r in runs]})
    shutil.rmtree(ctx.out / "seeds", ignore_errors=True)


@stage("utility_real", keys=ROW_KEYS, deps=("data", "classifier"), version=4)
def utility_real_stage(ctx: StageContext) -> None:
    """The real row: the reference classifier as seed 0 (or retrained at this step's budget), more seeds."""
    train = load_splits(ctx.pipeline, mmap=True)["train"]
    if not ctx.config["utility.classifier"]:
        _train_into(ctx, train, "real", first=ctx.inputs["classifier"])
    else:
        _train_into(ctx, train, "real (retrained)")


def _release_stage(name: str):
    def utility_release_stage(ctx: StageContext) -> None:
        release, _ = load_release(ctx.pipeline, name)
        n_real = len(load_splits(ctx.pipeline, mmap=True)["train"])
        _train_into(ctx, release, name, recipe=row_recipe(ctx.config, len(release), n_real))

    utility_release_stage.__doc__ = f"Train the classifier on release {name!r} (source labels), test on real."
    utility_release_stage.__qualname__ = f"utility_release_stage[{name}]"
    return stage(f"utility_{name}", keys=RELEASE_ROW_KEYS, deps=("data", RELEASES[name].stage),
                 version=5)(utility_release_stage)


for _name in RELEASES:
    _release_stage(_name)


def utility_stage_name(row: str) -> str:
    """The stage of a main-table row (``"real"`` or a release name)."""
    return "utility_real" if row == REAL else f"utility_{row}"


def load_test_probs(pipe: Pipeline, row: str) -> np.ndarray:
    """(seeds, N_test, 8) predictions on the real test split of the classifiers trained on ``row``."""
    return np.load(pipe.get(utility_stage_name(row)) / "test_probs.npy", allow_pickle=False)


def load_training_info(pipe: Pipeline, row: str) -> dict:
    """``info.json`` of a row: training set, size, label counts, seeds, best epochs, seconds per seed."""
    return json.loads((pipe.get(utility_stage_name(row)) / "info.json").read_text())


# ------------------------------------------------------------------------------ cross-dataset
@stage("utility_cross_site", keys=("seed", "data", "data_root", "classifier", "utility.classifier", "utility.cross_site",
                                   "utility.n_boot", "utility.level"),
       deps=("data", "utility_real"), version=3)
def utility_cross_site_stage(ctx: StageContext) -> None:
    """One real-data classifier per dataset, each tested on every dataset's test split."""
    u = ctx.config["utility"]
    seed = int(ctx.config["seed"])
    home = ctx.config["data"]
    splits, homes = {}, []
    for name, overrides in tqdm(u["cross_site"].items(), desc="cross-site datasets", leave=False):
        data_cfg = validate_data_cfg({**home, **overrides})
        if data_cfg == validate_data_cfg(home):
            splits[name] = load_splits(ctx.pipeline, mmap=True)
            homes.append(name)
            continue
        splits[name] = build_dataset(data_cfg, ctx.config["data_root"], seed=seed)
    todo = [name for name in splits if name not in homes and not (ctx.out / "models" / name / "info.json").exists()]
    run_jobs(fit_seed, [(splits[name]["train"], splits[name]["val"], splits[name]["test"], classifier_recipe(ctx.config),
                         seed, ctx.out / "models" / name) for name in todo], desc="cross-site classifiers")
    models = {name: Classifier.load(ctx.inputs["utility_real"] if name in homes else ctx.out / "models" / name)
              for name in splits}
    bseed = seeds.derive(seed, "utility", "bootstrap")
    aurocs = {tr: {te: evaluate_classifier(models[tr], splits[te]["test"], u["n_boot"], bseed, u["level"])
                   .loc["mean", ["auroc", "lo", "hi"]].astype(float).to_dict() for te in splits} for tr in models}
    sizes = {name: {k: len(v) for k, v in s.items()} for name, s in splits.items()}
    atomic_write_json(ctx.out / "cross_site.json", {"auroc": aurocs, "sizes": sizes, "home": homes,
                                                    "datasets": u["cross_site"]})


def load_cross_site(pipe: Pipeline) -> dict:
    """``cross_site.json``: {"auroc": {train: {test: {auroc, lo, hi}}}, "sizes", "home", "datasets"}."""
    return json.loads((pipe.get("utility_cross_site") / "cross_site.json").read_text())
