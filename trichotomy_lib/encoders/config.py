"""The ``encoder`` profile section: which pseudo-conditioning encoder, and how it is trained."""

from __future__ import annotations

from ..config import ConfigError, section
from .ssl import SSL_DEFAULTS, check_augment

ENCODER_DEFAULTS: dict = {
    # None: train the in-project SimCLR encoder; else a torchvision name (encoders.backbone.BACKBONES)
    "backbone": None,
    "weights": None,           # local .safetensors for ``backbone`` (relative: from the project root)
    "embed_batch_size": 256,   # images per forward pass when embedding (does not change results)
    **SSL_DEFAULTS,            # SimCLR hyperparameters (ignored when ``backbone`` is set)
}


def encoder_config(cfg: dict) -> dict:
    """The ``encoder`` section over ``ENCODER_DEFAULTS`` (unknown keys and bad augment keys rejected)."""
    enc = section(cfg, "encoder", ENCODER_DEFAULTS)
    enc["augment"] = check_augment(enc["augment"] or {})
    if enc["backbone"] is None and enc["weights"] is not None:
        raise ConfigError("encoder.weights is set but encoder.backbone is not; name the architecture (e.g. resnet50)")
    return enc


def ssl_hyperparameters(enc: dict) -> dict:
    """The SimCLR part of a resolved ``encoder`` section."""
    return {k: enc[k] for k in SSL_DEFAULTS}
