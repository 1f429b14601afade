"""The reference classifier (DESIGN step 3): a multi-label classifier of the 8 findings.

It is the project's utility yardstick twice over:

- trained on the real training split and tested on the real test split it gives the
  real-data baseline row of the paper's main table (per-class and mean AUROC);
- trained on a synthetic release (labels of each sample's source image) and tested on the
  same real test split it gives that release's utility (DESIGN step 8);
- its sigmoid outputs score *label consistency* in the privacy filter (DESIGN step 6).

Modules:

- ``config``: the ``classifier`` profile section (``CLASSIFIER_DEFAULTS``, ``classifier_config``);
- ``nets``: the networks (``SmallCNN``, DenseNet-121 as in CheXNet);
- ``model``: ``Classifier`` — predictions and the saved-model files;
- ``training``: ``fit_classifier`` — augmentation, learning-rate schedule, epoch order, resume;
- ``consistency``: label consistency of prediction pairs (numpy/pandas only);
- ``metrics``: validation BCE, AUROC with bootstrap CIs, ROC curves.

Every public name is importable from this package; a submodule is imported on first use of
one of its names, so ``from trichotomy_lib.evaluation.classifier import label_consistency``
loads the consistency code alone, not the networks or the training loop.
"""

from __future__ import annotations

import importlib

# public name → submodule that defines it
_EXPORTS = {
    "CLASSIFIER_DEFAULTS": "config", "DEFAULTS": "config", "classifier_config": "config",
    "ARCHS": "nets", "SmallCNN": "nets", "DenseNetCXR": "nets", "build_densenet121": "nets", "build_net": "nets",
    "n_parameters": "nets",
    "Classifier": "model",
    "TRAINING_STATE_FILE": "training", "fit_classifier": "training", "augment": "training",
    "learning_rate": "training", "epoch_batches": "training",
    "PAPER_CONSISTENCY": "consistency", "label_consistency": "consistency", "consistency_matrix": "consistency",
    "pair_consistency": "consistency", "summarize_pair_consistency": "consistency",
    "mean_bce": "metrics", "evaluate_classifier": "metrics", "roc_curves": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
