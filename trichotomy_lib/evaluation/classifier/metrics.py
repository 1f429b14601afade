"""How well a classifier predicts the 8 findings: mean BCE (model selection), AUROC with CIs, ROC curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ...data.imageset import LABELS, N_LABELS, ImageSet
from ...device import autocast

if TYPE_CHECKING:
    from .model import Classifier


@torch.inference_mode()
def mean_bce(net: nn.Module, imageset: ImageSet, batch_size: int, device, precision: str = "fp32") -> float:
    """Mean binary cross-entropy per label of ``net`` (eval mode) on ``imageset`` — the val loss.

    ``precision`` ("fp32" or "bf16") is that of the forward pass; the loss is summed in fp32.
    Training selects its epoch with the val loss in its own precision (in bf16 the val pass
    costs half as much); predictions (``Classifier.predict_proba``) are always fp32."""
    net.eval()
    total = 0.0
    for start in range(0, len(imageset), batch_size):
        idx = np.arange(start, min(start + batch_size, len(imageset)))
        with autocast(device, precision):
            logits = net(imageset.tensor(idx).to(device))
        target = torch.from_numpy(np.asarray(imageset.labels[idx], dtype=np.float32)).to(device)
        total += float(F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum"))
    return total / (len(imageset) * N_LABELS)


def evaluate_classifier(clf: Classifier, test_set: ImageSet, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95, probs: np.ndarray | None = None) -> pd.DataFrame:
    """Per-class and mean AUROC on ``test_set`` with bootstrap CIs (``stats.auroc_table``).

    probs: the classifier's (N, 8) predictions on ``test_set`` if already computed (e.g. the
    ``classifier`` stage's ``test_probs.npy``); otherwise they are predicted here.
    Returns the DataFrame indexed by ``LABELS`` + "mean" (columns auroc, lo, hi, n_pos, ...).
    """
    from ..stats import auroc_table

    if len(test_set) == 0:
        raise ValueError("evaluate_classifier: test_set is empty")
    if probs is None:
        probs = clf.predict_proba(test_set)
    probs = np.asarray(probs)
    if probs.shape != (len(test_set), N_LABELS):
        raise ValueError(f"evaluate_classifier: probs must be ({len(test_set)}, {N_LABELS}), got {probs.shape}")
    return auroc_table(test_set.labels, probs, list(LABELS), n_boot=n_boot, seed=seed, level=level)


def roc_curves(y_true, probs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (false-positive rate, true-positive rate)} per class with both label values."""
    from sklearn.metrics import roc_curve

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    curves = {}
    for k, name in enumerate(LABELS):
        if 0 < y_true[:, k].sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true[:, k], probs[:, k])
            curves[name] = (fpr, tpr)
    return curves
