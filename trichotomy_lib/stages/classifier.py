"""Stage ``classifier``: the reference classifier trained on the real splits (DESIGN step 3).

Artifacts: ``classifier.safetensors`` + ``classifier.json`` (weights, hyperparameters,
training history; ``Classifier.load``) and ``test_probs.npy`` — the (N, 8) sigmoid outputs on
the real test split, rows in the test split's order. An interrupted run resumes from the
per-epoch checkpoint in the stage's partial directory.
"""

from __future__ import annotations

import shutil

import numpy as np

from ..config import register_section
from ..evaluation.classifier import Classifier, classifier_config, fit_classifier
from ..io import atomic_path
from ..pipeline import Pipeline, StageContext, stage
from .data import load_splits

register_section("classifier")(lambda cfg: classifier_config(cfg.get("classifier")))


@stage("classifier", keys=("seed", "classifier"), deps=("data",), version=3)
def classifier_stage(ctx: StageContext) -> None:
    """Fit the classifier on the real train split, select the epoch on the real val split."""
    splits = load_splits(ctx.pipeline, mmap=True)
    checkpoint = ctx.out / "checkpoint"
    clf = fit_classifier(splits["train"], splits["val"], ctx.config["classifier"], seed=ctx.config["seed"],
                         checkpoint_dir=checkpoint)
    clf.save(ctx.out)
    with atomic_path(ctx.out / "test_probs.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, clf.predict_proba(splits["test"]).astype(np.float32), allow_pickle=False)
    shutil.rmtree(checkpoint)  # the finished artifact needs only the selected weights


def load_classifier(pipe: Pipeline, device=None) -> Classifier:
    """The reference classifier of the pipeline's config (trained on first use, then cached)."""
    return Classifier.load(pipe.get("classifier"), device=device)


def load_test_probs(pipe: Pipeline) -> np.ndarray:
    """(N, 8) predictions of the reference classifier on the real test split (split order)."""
    return np.load(pipe.get("classifier") / "test_probs.npy", allow_pickle=False)
