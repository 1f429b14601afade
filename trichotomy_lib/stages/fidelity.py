"""Stages of the fidelity and diversity evaluation (DESIGN step 8).

* ``fidelity_features`` — the fidelity feature network (``utility.features``: by default a
  classifier trained on the real split with its own seed — neither the pseudo-conditioning
  encoder nor the filter's consistency classifier) and its features of the real train and
  test splits.
* ``fidelity_<release>`` — Fréchet distance and Image Retrieval Score of each release in that
  feature space, against a real reference of the same size (``evaluation.fidelity.fidelity_row``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from .. import seeds
from ..evaluation.classifier import Classifier
from ..evaluation.fidelity import fidelity_row, penultimate_features
from ..evaluation.utility import train_and_predict
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..releases import RELEASES
from .data import load_splits
from .generate import load_release
from .utility import CLASSIFIER_KEYS, classifier_recipe, save_npy


@stage("fidelity_features", keys=(*CLASSIFIER_KEYS, "utility.features"), deps=("data", "classifier"), version=2)
def fidelity_features_stage(ctx: StageContext) -> None:
    """The fidelity feature network and its (N, D) features of the real train and test splits."""
    splits = load_splits(ctx.pipeline, mmap=True)
    if ctx.config["utility.features"] == "reference":
        clf = Classifier.load(ctx.inputs["classifier"])
    else:  # own seed: independent of the classifier that selected the filtered samples
        clf = train_and_predict(splits["train"], splits["val"], splits["test"], classifier_recipe(ctx.config),
                                seeds.derive(int(ctx.config["seed"]), "utility", "features"),
                                checkpoint_dir=ctx.out / "checkpoint")[0]
        shutil.rmtree(ctx.out / "checkpoint", ignore_errors=True)
    clf.save(ctx.out)
    for split in ("train", "test"):
        save_npy(ctx.out / f"{split}_features.npy", penultimate_features(clf, splits[split]))


def load_feature_net(pipe: Pipeline) -> tuple[Classifier, np.ndarray, np.ndarray]:
    """(feature classifier, train features, test features)."""
    path = pipe.get("fidelity_features")
    return Classifier.load(path), np.load(path / "train_features.npy"), np.load(path / "test_features.npy")


def _fidelity_stage(name: str):
    def fidelity_release_stage(ctx: StageContext) -> None:
        release, _ = load_release(ctx.pipeline, name)
        clf, train_f, test_f = load_feature_net(ctx.pipeline)
        feats = penultimate_features(clf, release)
        save_npy(ctx.out / "features.npy", feats)
        atomic_write_json(ctx.out / "fidelity.json", fidelity_row(
            feats, train_f, test_f, ctx.config["utility.alpha_e"],
            seed=seeds.derive(int(ctx.config["seed"]), "fidelity", "equal_n")))

    fidelity_release_stage.__doc__ = f"Fréchet distance and IRS of release {name!r} in the fidelity feature space."
    fidelity_release_stage.__qualname__ = f"fidelity_release_stage[{name}]"
    return stage(f"fidelity_{name}", keys=("seed", "utility.alpha_e"), deps=("fidelity_features", RELEASES[name].stage),
                 version=3)(fidelity_release_stage)


for _name in RELEASES:
    _fidelity_stage(_name)


def load_fidelity(pipe: Pipeline, name: str) -> dict:
    """``fidelity.json`` of release ``name``: n, FD, IRS_α, IRS_∞ with bounds, adjusted IRS."""
    return json.loads((pipe.get(f"fidelity_{name}") / "fidelity.json").read_text())
