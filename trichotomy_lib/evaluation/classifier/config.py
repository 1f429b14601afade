"""The ``classifier`` profile section: defaults with their ranges, and the check that merges a profile over them."""

from __future__ import annotations

from ... import config as config_mod
from ...device import PRECISIONS
from .nets import ARCHS

# Preset for PhantomCXR at 32 px on CPU (the profiles override what they need).
CLASSIFIER_DEFAULTS: dict = {
    "arch": "cnn",          # "cnn" (SmallCNN, CPU-sized) or "densenet121" (CheXNet; torchvision)
    "width": 32,            # cnn: channels of the first block, doubled per block (4–128)
    "depth": 3,             # cnn: conv blocks, each halving the resolution (1–log2(size))
    "weights": None,        # densenet121: local .safetensors of torchvision ImageNet weights, relative
                            #   to the project root or absolute (None: random init)
    "epochs": 20,           # maximum number of epochs (>= 1)
    "patience": None,       # stop after this many epochs without a lower val loss (None: all epochs)
    "batch_size": 64,       # training batch size (paper: 16 for DenseNet-121)
    "lr": 2e-3,             # Adam learning rate, > 0 (paper: 1e-4 for DenseNet-121)
    "lr_schedule": "cosine",# "constant" (paper) or "cosine" (decay to 0 over `epochs`, per step)
    "weight_decay": 0.0,    # Adam (L2) weight decay (>= 0)
    "precision": "auto",    # training step: "fp32", "bf16" (autocast) or "auto" (bf16 where the device
                            #   has it natively, ``device.native_bf16``); predictions are always fp32
    "augment": {            # light augmentation, drawn per image from the seed (no flips by default:
        "translate": 0.06,  #   the heart is on the left) — max shift, fraction of the image side (0: off)
        "scale": 0.05,      #   max zoom in/out, fraction (0: off)
        "rotate": 5.0,      #   max rotation, degrees (0: off)
        "brightness": 0.05, #   max additive intensity shift, in [-1, 1] image units (0: off)
        "contrast": 0.1,    #   max multiplicative contrast change, fraction (0: off)
        "hflip": False,     #   random horizontal flips
        "noise": 0.0,       #   Gaussian pixel noise σ, in [-1, 1] image units (0: off; drawn after the rest, so
                            #   0 leaves every other draw as it was)
    },
    "eval_batch_size": 64,  # batch size of predictions and of the per-epoch val loss (>= 1); on CPU at 32 px
                            #   64 runs 1.8x faster than 256 (benchmarks/classifier.py); same outputs
    "n_boot": 1000,         # bootstrap resamples for the AUROC CIs (evaluation only; ~1000)
}
DEFAULTS = CLASSIFIER_DEFAULTS  # the same dict under its short name


def classifier_config(cfg: dict | None) -> dict:
    """``cfg`` (a ``classifier`` profile section, possibly partial) over ``CLASSIFIER_DEFAULTS``, checked.

    Unknown keys and out-of-range values raise ``config.ConfigError`` naming the field.
    """
    merged = config_mod.section({"classifier": cfg or {}}, "classifier", CLASSIFIER_DEFAULTS)
    known_augment = CLASSIFIER_DEFAULTS["augment"]
    unknown = sorted(set(merged["augment"]) - set(known_augment))
    if unknown:
        raise config_mod.ConfigError(f"unknown key(s) in 'classifier.augment': {unknown}; known: {sorted(known_augment)}")
    for key, value in merged["augment"].items():
        if key != "hflip" and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0):
            raise config_mod.ConfigError(f"classifier.augment.{key}={value!r}: must be a number >= 0")
    if merged["arch"] not in ARCHS:
        raise config_mod.ConfigError(f"classifier.arch={merged['arch']!r}: choose one of {list(ARCHS)}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise config_mod.ConfigError(f"classifier.{key}={merged[key]!r}: must be an integer >= 1")
    if merged["patience"] is not None and (not isinstance(merged["patience"], int) or merged["patience"] < 1):
        raise config_mod.ConfigError(f"classifier.patience={merged['patience']!r}: must be None or an integer >= 1")
    if merged["lr_schedule"] not in ("constant", "cosine"):
        raise config_mod.ConfigError(f"classifier.lr_schedule={merged['lr_schedule']!r}: choose 'constant' or 'cosine'")
    if merged["precision"] not in PRECISIONS:
        raise config_mod.ConfigError(f"classifier.precision={merged['precision']!r}: choose one of {list(PRECISIONS)}")
    if not merged["lr"] > 0:
        raise config_mod.ConfigError(f"classifier.lr={merged['lr']!r}: must be > 0")
    return merged
