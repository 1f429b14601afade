"""The frozen feature extractor every later step conditions on, and its output convention.

DiADM's pseudo-conditioning (DESIGN step 4) embeds each real image with a frozen network and
conditions the diffusion model on that vector. The paper's convention for the vector is

    e(x) = sqrt(D) · f(x) / ||f(x)||_2                                              (1)

(f: the network's D-dimensional feature; SwAV/Inception in the paper, D = 2048), so every
embedding lies on the sphere of radius sqrt(D): each coordinate has unit mean square, like
a one-hot class label scaled to the same energy.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..device import default_device


def normalize_embeddings(features: torch.Tensor) -> torch.Tensor:
    """Eq. (1): rows of ``features`` (n, D) scaled to L2 norm exactly sqrt(D).

    A zero row has no direction and raises (it would otherwise become NaN or stay 0 silently).
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (n, D), got shape {tuple(features.shape)}")
    norms = features.norm(dim=1, keepdim=True)
    zero = int((norms == 0).sum())
    if zero:
        raise ValueError(f"{zero} of {len(features)} feature vectors are exactly zero; cannot normalise them")
    return features / norms * math.sqrt(features.shape[1])


def check_images(images: torch.Tensor, image_size: int | None = None, channels: int = 1) -> None:
    """Raise a clear error unless ``images`` is float (n, 1, H, W) in [-1, 1] (``ImageSet.tensor``)."""
    if not torch.is_tensor(images):
        raise TypeError(f"images must be a torch.Tensor (ImageSet.tensor()), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"images must be (n, {channels}, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1] (ImageSet.tensor()), got dtype {images.dtype}")
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"images are {tuple(images.shape[-2:])} pixels but the encoder was built for "
            f"{image_size}x{image_size}; resample the images or train an encoder at this size")
    if images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
            raise ValueError(f"images must lie in [-1, 1] (ImageSet.tensor()), got range [{lo:.3g}, {hi:.3g}]")


class Encoder:
    """A frozen feature network with the paper's output normalisation (eq. 1).

    Args:
        net: module mapping float (n, 1, H, W) in [-1, 1] to features (n, dim).
        dim: feature dimension D.
        image_size: the H = W the network expects (None: any size; backbones resize).
        info: JSON-able description written next to the weights (kind, hyperparameters).
        device: where to run (default ``device.default_device()``).
    """

    def __init__(self, net: nn.Module, dim: int, image_size: int | None, info: dict, device=None):
        self.device = torch.device(device) if device is not None else default_device()
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.dim = int(dim)
        self.image_size = image_size
        self.info = dict(info)

    def __repr__(self) -> str:
        return f"Encoder(kind={self.info.get('kind')!r}, dim={self.dim}, image_size={self.image_size})"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) features of one batch, on the encoder's device."""
        out = self.net(images.to(self.device, torch.float32))
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise RuntimeError(f"encoder network returned shape {tuple(out.shape)}, expected (n, {self.dim})")
        return out

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """Embeddings (n, dim) float32 on the CPU, each row of norm sqrt(dim) (eq. 1).

        Args:
            images: float (n, 1, H, W) in [-1, 1], as ``ImageSet.tensor()`` returns.
            batch_size: images per forward pass (>= 1, default 256); results do not depend on it
                (the network has no batch statistics).
            progress: show a tqdm bar.
        """
        check_images(images, self.image_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        for start in tqdm(range(0, len(images), batch_size), desc="embed", disable=not progress, leave=False):
            chunks.append(normalize_embeddings(self.features(images[start:start + batch_size]).float()).cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)
