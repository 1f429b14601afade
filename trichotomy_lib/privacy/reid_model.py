"""The siamese re-identification verifier (Packhäuser et al., Sci Rep 2022) as a torch module.

    e(x)          = sigmoid(fc(encoder(x)))            ∈ (0, 1)^embed_dim   (embed_dim = 128)
    logit(x1, x2) = w · |e(x1) − e(x2)| + b             ("same patient" if sigmoid(logit) > 0.5)

``encoder`` is a small CNN (default; fast on CPUs at 32–64 px) or a torchvision ResNet-50
(``backbone="resnet50"``, the paper's, optionally initialised from a local ``.safetensors``
file). ``forward(x1, x2)`` is the naive per-pair path (two encoder passes per pair); everything
that scores many pairs goes through ``embed`` once per image and the head on embeddings
(``reid_score``). Weights are stored as ``model.safetensors`` + ``verifier.json`` (the
hyper-parameters); loading never unpickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import channels_last, default_device
from ..checkpoint import save_weights
from ..io import atomic_write_json
from . import reid_score

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "verifier.json"

# Architecture presets (plain dict, EDM2 style). Ranges in ``Verifier``'s docstring.
MODEL_DEFAULTS: dict = {
    "backbone": "cnn",     # "cnn" (small CNN) | "resnet50" (torchvision, the paper's)
    "width": 16,           # cnn: channels of the first stage (doubled every stage)
    "stages": 3,           # cnn: conv stages, each halving the resolution
    "pool": "flatten",     # cnn: "flatten" (keeps the layout of the last feature map) | "avg" (global)
    "embed_dim": 128,      # sigmoid embedding size (paper: 128)
    "image_size": 32,      # square input size the verifier accepts
    "in_channels": 1,      # grayscale
}


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv(in→w) → [maxpool, conv(→w·2^i)] × stages → conv → pooling.

    ``pool="flatten"`` keeps the (size/2^stages)² layout of the last feature map (where the
    heart sits relative to the lungs is identity; a global average would discard it),
    ``pool="avg"`` is global average pooling (translation invariant, fewer parameters).
    """

    def __init__(self, in_channels: int, width: int, stages: int, pool: str = "flatten", image_size: int = 32):
        super().__init__()
        layers, c = [_conv_block(in_channels, width)], width
        for i in range(stages):
            c_out = width * 2 ** i
            layers += [nn.MaxPool2d(2), _conv_block(c, c_out)]
            c = c_out
        layers.append(_conv_block(c, c))
        if pool == "avg":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            self.out_dim = c
        elif pool == "flatten":
            layers.append(nn.Flatten())
            self.out_dim = c * (image_size // 2 ** stages) ** 2
        else:
            raise ValueError(f"reid.pool must be 'flatten' or 'avg', got {pool!r}")
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _GrayToRGB(nn.Module):
    """Repeats a 1-channel image to the 3 channels an ImageNet backbone expects."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def build_resnet50(in_channels: int, weights_path: str | os.PathLike | None = None) -> tuple[nn.Module, int]:
    """torchvision ResNet-50 without its classifier → (module, 2048).

    ``weights_path``: a local ``.safetensors`` file with a torchvision ``resnet50`` state dict
    (e.g. ImageNet weights converted once with ``safetensors.torch.save_file``); its ``fc.*``
    entries are ignored. Nothing is downloaded. Needs the ``vision`` extra (torchvision).
    Inputs in [-1, 1] are used as they are (close to ImageNet-normalised ranges).
    """
    try:
        import torchvision
    except ImportError:
        raise ImportError("backbone 'resnet50' needs torchvision: pip install 'trichotomy[vision]'") from None
    if in_channels not in (1, 3):
        raise ValueError(f"backbone 'resnet50' takes 1 or 3 input channels, got in_channels={in_channels}")
    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()
    if weights_path is not None:
        path = Path(weights_path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: backbone weights must be a .safetensors file (pickled checkpoints are not loaded)")
        if not path.exists():
            raise FileNotFoundError(f"{path}: backbone weights file not found (reid.backbone_weights)")
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("fc.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not a torchvision resnet50 state dict (missing {missing[:3]}…, unexpected {unexpected[:3]}…)")
    return _GrayToRGB(net), 2048


class Verifier(nn.Module):
    """Siamese "same patient?" verifier.

    Args (defaults in ``MODEL_DEFAULTS``):
        backbone: "cnn" (default) or "resnet50".
        width: cnn channels of the first stage (default 16; 8–64).
        stages: cnn resolution-halving stages (default 3; needs image_size >= 2**stages).
        pool: cnn pooling, "flatten" (default) or "avg" (see ``SmallCNN``).
        embed_dim: embedding size (default 128, the paper's).
        image_size: the square input size (default 32); other sizes are rejected.
        in_channels: input channels (default 1).
        backbone_weights: resnet50 only, local .safetensors initialisation (not stored in the
            config: the trained weights carry everything).

    Inputs are float images (N, in_channels, image_size, image_size) in [-1, 1]
    (``ImageSet.tensor``).
    """

    def __init__(self, backbone: str = "cnn", width: int = 16, stages: int = 3, pool: str = "flatten",
                 embed_dim: int = 128, image_size: int = 32, in_channels: int = 1,
                 backbone_weights: str | None = None):
        super().__init__()
        if backbone == "cnn":
            if width < 1 or stages < 1:
                raise ValueError(f"cnn backbone needs width >= 1 and stages >= 1, got width={width}, stages={stages}")
            if image_size < 2 ** stages:
                raise ValueError(f"image_size={image_size} is too small for stages={stages} (needs >= {2 ** stages})")
            self.encoder = SmallCNN(in_channels, width, stages, pool, image_size)
            feat_dim = self.encoder.out_dim
        elif backbone == "resnet50":
            self.encoder, feat_dim = build_resnet50(in_channels, backbone_weights)
        else:
            raise ValueError(f"reid.backbone must be 'cnn' or 'resnet50', got {backbone!r}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.config = dict(backbone=backbone, width=int(width), stages=int(stages), pool=pool, embed_dim=int(embed_dim),
                           image_size=int(image_size), in_channels=int(in_channels))
        self.fc = nn.Linear(feat_dim, embed_dim)
        self.head = nn.Linear(embed_dim, 1)
        # Start from "near in embedding = same patient" (negative weights on |e1 − e2|) rather
        # than a random sign per dimension: avoids the long initial plateau of siamese BCE.
        with torch.no_grad():
            self.head.weight.copy_(-self.head.weight.abs())
        channels_last(self)  # NHWC convolutions: the same values, faster on CPU (device.channels_last)

    # -- the network ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """e(x) = sigmoid(fc(encoder(x))), differentiable (training). (N, embed_dim)."""
        return torch.sigmoid(self.fc(self.encoder(x)))

    def head_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """w · |e1 − e2| + b → (N,)."""
        return self.head((e1 - e2).abs()).squeeze(1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Naive per-pair logits: two encoder passes per pair (the paper code's way)."""
        return self.head_logits(self.embedding(x1), self.embedding(x2))

    # -- input checks ---------------------------------------------------------------------
    def check_images(self, images, name: str = "images") -> None:
        """Raise a ValueError naming what is wrong if ``images`` is not what the verifier takes."""
        c, s = self.config["in_channels"], self.config["image_size"]
        want = f"(N, {c}, {s}, {s}) float in [-1, 1]"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor {want} or an ImageSet, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"{name} must be {want}, got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError(f"{name} is empty (0 images): nothing to embed")
        if images.shape[1] != c:
            raise ValueError(f"{name} has {images.shape[1]} channel(s), the verifier takes {c}: shape {tuple(images.shape)}, expected {want}")
        if tuple(images.shape[2:]) != (s, s):
            raise ValueError(f"{name} are {images.shape[2]}x{images.shape[3]} px, the verifier was built for {s}x{s}: expected {want}")
        if not images.is_floating_point():
            raise ValueError(f"{name} has dtype {images.dtype}; expected {want} (uint8 images: use ImageSet.tensor)")

    # -- embedding once per image ---------------------------------------------------------
    @torch.no_grad()
    def embed(self, images, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embeddings of ``images`` (a tensor (N, C, H, W) in [-1, 1], or an ImageSet) → (N, D) on the CPU.

        Eval mode (BatchNorm running statistics), ``batch_size`` images per forward pass
        (default 256); the result does not depend on the batch size up to float rounding.
        """
        from tqdm.auto import tqdm

        from ..data.imageset import ImageSet

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(images, ImageSet):
            if len(images) == 0:
                raise ValueError("images is an empty ImageSet (0 images): nothing to embed")
            n = len(images)
            self.check_images(images.tensor([0]), "images (ImageSet)")
            get = lambda i0, i1: images.tensor(np.arange(i0, i1))  # noqa: E731
        else:
            self.check_images(images)
            if images.abs().max() > 2.0:
                raise ValueError(f"images have values up to {float(images.abs().max()):.3g}; expected [-1, 1] (use ImageSet.tensor)")
            n = len(images)
            get = lambda i0, i1: images[i0:i1]  # noqa: E731
        was_training = self.training
        self.eval()
        try:
            out = []
            for i0 in tqdm(range(0, n, batch_size), desc="embed", disable=not progress, leave=False):
                out.append(self.embedding(get(i0, min(n, i0 + batch_size)).to(self.device, torch.float32)).float().cpu())
        finally:
            self.train(was_training)
        return torch.cat(out)

    # -- scoring on embeddings (see reid_score) ---------------------------------------------
    def _wb(self):
        return self.head.weight.detach()[0], float(self.head.bias.detach()[0])

    def score_pairs(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """Logits of aligned pairs of embeddings: |a − b| · w + b → (N,)."""
        return reid_score.score_pairs(emb_a, emb_b, *self._wb())

    def score_matrix(self, emb_q: torch.Tensor, emb_k: torch.Tensor, chunk: int = reid_score.Q_BLOCK) -> torch.Tensor:
        """Logits of every query against every key → (Nq, Nk), in blocks of ``chunk`` queries."""
        return reid_score.score_matrix(emb_q, emb_k, *self._wb(), chunk=chunk, device=self.device)

    def max_score(self, emb_q: torch.Tensor, emb_k: torch.Tensor, chunk: int = reid_score.Q_BLOCK):
        """Exact (max logit, argmax key) of every query over all keys."""
        return reid_score.max_score(emb_q, emb_k, *self._wb(), chunk=chunk, device=self.device)

    def retrieve_then_verify(self, emb_q: torch.Tensor, emb_keys: torch.Tensor, k: int = 16,
                             threshold: float = 0.5, chunk: int = reid_score.Q_BLOCK) -> reid_score.Retrieval:
        """Top-k nearest keys by embedding, then the head on those → ``Retrieval``."""
        return reid_score.retrieve_then_verify(emb_q, emb_keys, *self._wb(), k=k, threshold=threshold,
                                               chunk=chunk, device=self.device)

    @staticmethod
    def probability(logits: torch.Tensor) -> torch.Tensor:
        """sigmoid(logit): the "same patient" probability (threshold 0.5 = logit 0)."""
        return torch.sigmoid(logits)

    # -- files ----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """``<directory>/model.safetensors`` + ``verifier.json`` (config + ``extra``), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / WEIGHTS_FILE, self.state_dict())
        atomic_write_json(directory / CONFIG_FILE, {"config": self.config, **(extra or {})})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> "Verifier":
        """Rebuild from ``verifier.json`` and fill with ``model.safetensors`` (no unpickling)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (cfg_path, w_path):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; not a saved verifier directory")
        config = json.loads(cfg_path.read_text()).get("config")
        if not isinstance(config, dict):
            raise ValueError(f"{cfg_path}: no 'config' mapping")
        unknown = sorted(set(config) - set(MODEL_DEFAULTS))
        if unknown:
            raise ValueError(f"{cfg_path}: unknown verifier hyper-parameter(s) {unknown}; known {sorted(MODEL_DEFAULTS)}")
        model = cls(**config)
        try:
            model.load_state_dict(load_file(str(w_path)), strict=True)
        except RuntimeError as err:
            raise ValueError(f"{w_path}: weights do not match {cfg_path}: {err}") from None
        model.eval()
        return model.to(device if device is not None else default_device())
