"""Notebook 02's tables: the reference classifier's AUROC and its label consistency."""

from __future__ import annotations

import pandas as pd

from ..evaluation.classifier import evaluate_classifier, pair_consistency, summarize_pair_consistency
from ..pipeline import Pipeline
from ..stages.classifier import load_classifier, load_test_probs
from ..stages.data import load_splits

__all__ = ["reference_classifier", "real_classifier_auroc", "consistency_pairs", "real_classifier_label_consistency"]


def reference_classifier(pipe: Pipeline) -> pd.Series:
    """Architecture, size, data and training outcome of the reference classifier."""
    clf = load_classifier(pipe)
    return pd.Series({
        "architecture": clf.hparams["arch"], "parameters": clf.info["n_parameters"],
        "image size": "×".join(map(str, clf.image_shape)),
        "train / val images": f"{clf.info['n_train']} / {clf.info['n_val']}", "epochs run": len(clf.history),
        "best epoch (min val loss)": clf.best_epoch, "stage wall time (s)": pipe.seconds("classifier"),
    }, name="reference classifier")


def real_classifier_auroc(pipe: Pipeline) -> pd.DataFrame:
    """Per-class and mean AUROC on the real test split with bootstrap intervals."""
    return evaluate_classifier(load_classifier(pipe), load_splits(pipe)["test"], n_boot=pipe.cfg["classifier"]["n_boot"],
                               seed=int(pipe.cfg["seed"]), probs=load_test_probs(pipe))


def consistency_pairs(pipe: Pipeline) -> dict[str, pd.DataFrame]:
    """{"train", "test"}: label consistency (mean BCE of the classifier's predictions) of random
    same-patient and different-patient image pairs of each split."""
    splits = load_splits(pipe)
    probs = {"train": load_classifier(pipe).predict_proba(splits["train"]), "test": load_test_probs(pipe)}
    return {name: pair_consistency(p, splits[name].patient_ids, seed=int(pipe.cfg["seed"])) for name, p in probs.items()}


def real_classifier_label_consistency(pairs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean BCE of same- vs different-patient pairs per split (the paper: 0.166 vs 0.213)."""
    return pd.concat({name: summarize_pair_consistency(df) for name, df in pairs.items()}, names=["split"])
