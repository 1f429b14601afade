"""Pseudo-conditioning encoders (DESIGN step 4): one frozen, normalised embedding per image.

* ``Encoder`` — any frozen network + the paper's normalisation (L2 → × sqrt(D)).
* ``ssl`` — the in-project SimCLR encoder trained on the training split (default).
* ``backbone`` — a torchvision backbone (ResNet-50 for SwAV, Inception-v3) from local weights.
* ``analysis`` — identity retrieval and linear probes of an embedding space.

The pipeline stage and its loaders are in ``trichotomy_lib.stages.encoder``.
"""

from .base import Encoder, check_images, normalize_embeddings
from .store import load_encoder_dir, save_encoder

__all__ = ["Encoder", "check_images", "normalize_embeddings", "load_encoder_dir", "save_encoder"]
