"""A pretrained backbone from a local weights file as the pseudo-conditioning encoder (option).

The paper embeds images with SwAV (a ResNet-50) or Inception-v3 features, 2048-d, taken at the
penultimate layer (after global pooling, before the classifier). This module rebuilds such a
network from a **local safetensors file** (nothing is downloaded, nothing is unpickled):

    encoder:
      backbone: resnet50                 # or inception_v3, densenet121, resnet18
      weights: weights/swav_resnet50.safetensors   # relative paths: from the project root

The general logic (strict loading, head removal, preprocessing) is ``backbone_encoder``, which
takes any ``nn.Module``; ``torchvision_encoder`` is a thin adapter that only builds the
torchvision architecture (torchvision is imported there and nowhere else; ``pip install
'trichotomy[vision]'``). To make a weights file: ``safetensors.torch.save_file(model.state_dict(),
path)`` once on a machine that has the checkpoint (SwAV's ``module.`` prefix stripped).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision constructor name → classifier attribute, penultimate width, input size, kwargs.
BACKBONES: dict[str, dict] = {
    "resnet18": {"head": "fc", "dim": 512, "input_size": 224, "kwargs": {}},
    "resnet50": {"head": "fc", "dim": 2048, "input_size": 224, "kwargs": {}},  # SwAV's architecture
    "densenet121": {"head": "classifier", "dim": 1024, "input_size": 224, "kwargs": {}},
    # transform_input: the Inception weights expect [-1, 1]; torchvision maps ImageNet-normalised
    # input there itself when this is set (as it does for its own pretrained weights).
    "inception_v3": {"head": "fc", "dim": 2048, "input_size": 299,
                     "kwargs": {"aux_logits": True, "transform_input": True, "init_weights": False}},
}


def resolve_weights_path(weights: str | os.PathLike | None) -> Path:
    """The weights file as an absolute path (relative: from the project root); must exist."""
    from ..config import project_root

    if weights is None or str(weights) == "":
        raise ValueError("encoder.weights: a backbone needs a local weights file (.safetensors); none given")
    path = Path(weights).expanduser()
    if not path.is_absolute():
        path = project_root() / path
    if not path.exists():
        raise FileNotFoundError(f"{path}: encoder weights file not found (encoder.weights)")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: encoder weights must be a .safetensors file (pickled checkpoints are never loaded)")
    return path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(module: nn.Module, path: str | os.PathLike, ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Load a safetensors state dict into ``module`` strictly; returns the keys ignored.

    Keys starting with one of ``ignore_prefixes`` (the removed classifier head) are skipped;
    any other missing, unexpected or mis-shaped key raises an error naming the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: encoder weights file not found (encoder.weights)")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    ignored = sorted(k for k in state if k.startswith(ignore_prefixes)) if ignore_prefixes else []
    state = {k: v for k, v in state.items() if k not in set(ignored)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[:2]}")
        raise ValueError(f"{path}: weights do not fit the {type(module).__name__} architecture: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)
    return ignored


class BackboneFeatures(nn.Module):
    """Grayscale [-1, 1] images → ImageNet-normalised RGB at ``input_size`` → ``model`` features."""

    def __init__(self, model: nn.Module, input_size: int | None):
        super().__init__()
        self.model, self.input_size = model, input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1) / 2).expand(-1, 3, -1, -1)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        out = self.model((x - self.mean) / self.std)
        return out.flatten(1)


def backbone_encoder(model: nn.Module, weights: str | os.PathLike, head: str, dim: int, input_size: int | None,
                     expected_sha256: str | None = None, info: dict | None = None, device=None) -> Encoder:
    """Any classification network as a frozen penultimate-layer feature extractor.

    Args:
        model: the architecture, randomly initialised (weights come from ``weights``).
        weights: local ``.safetensors`` state dict of ``model`` (head keys may be present).
        head: attribute name of the final classifier (``fc`` for ResNet); replaced by Identity,
            so the output is the pooled penultimate feature of width ``dim``.
        input_size: side the network expects (images are resized to it); None: no resizing.
        expected_sha256: if given, the file must have this hash (the weights changed otherwise).
        info: extra JSON-able fields recorded in ``encoder.json``.
    """
    path = resolve_weights_path(weights)
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"{path}: weights file changed since the embeddings were computed "
                         f"(sha256 {digest[:12]}…, expected {expected_sha256[:12]}…); clear the encoder stage")
    if not isinstance(getattr(model, head, None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no classifier module {head!r} to remove")
    setattr(model, head, nn.Identity())
    ignored = load_weights(model, path, ignore_prefixes=(f"{head}.",))
    meta = {"kind": "backbone", **(info or {}), "weights": str(path), "sha256": digest,
            "head": head, "ignored_keys": ignored, "input_size": input_size}
    return Encoder(BackboneFeatures(model, input_size), dim, None, meta, device)


def torchvision_encoder(name: str, weights: str | os.PathLike, expected_sha256: str | None = None, device=None) -> Encoder:
    """A torchvision architecture (``BACKBONES``) with local weights, as an ``Encoder``."""
    if name not in BACKBONES:
        raise ValueError(f"encoder.backbone: unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    resolve_weights_path(weights)  # a missing file is reported before the optional import
    try:
        import torchvision
    except ImportError as err:
        raise ImportError(f"encoder.backbone={name!r} needs torchvision: pip install 'trichotomy[vision]' ({err})") from None
    spec = BACKBONES[name]
    model = getattr(torchvision.models, name)(weights=None, **spec["kwargs"])
    return backbone_encoder(model, weights, spec["head"], spec["dim"], spec["input_size"],
                            expected_sha256=expected_sha256, info={"backbone": name}, device=device)
