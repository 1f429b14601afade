"""Latent diffusion for real data at 256–512 px: a diffusers ``AutoencoderKL`` from a local path.

Images are encoded once (posterior mean), and every latent channel is normalised to
mean 0 and std σ_data (the paper: SD-2 VAE latents, per-channel std 0.5):

    z_norm = (z − μ_c) / s_c · σ_data,     z = z_norm / σ_data · s_c + μ_c

with μ_c, s_c the per-channel mean and std over the encoded training set. Grayscale images
are repeated to the VAE's 3 input channels, and decoded RGB is averaged back to one channel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import atomic_write_json
from .edm import SIGMA_DATA


def load_vae(path: str | os.PathLike):
    """A diffusers ``AutoencoderKL`` from a local directory (safetensors weights; no download)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"diffusion.vae_path={path}: no config.json there; expected a diffusers AutoencoderKL directory")
    return AutoencoderKL.from_pretrained(path, use_safetensors=True, local_files_only=True).eval()


class LatentCodec:
    """Encode images to normalised latents and decode them back.

    Args:
        vae: a diffusers ``AutoencoderKL`` (eval mode; frozen).
        mean, std: per-channel latent statistics (None until ``fit``).
        sigma_data: the std normalised latents get (default 0.5).
    """

    def __init__(self, vae, mean=None, std=None, sigma_data: float = SIGMA_DATA):
        self.vae = vae.eval().requires_grad_(False)
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.as_tensor(std, dtype=torch.float32)
        self.sigma_data = float(sigma_data)

    @property
    def device(self):
        return next(self.vae.parameters()).device

    def _to_vae(self, x: torch.Tensor) -> torch.Tensor:
        want = self.vae.config.in_channels
        if x.shape[1] == want:
            return x
        if x.shape[1] == 1:
            return x.expand(-1, want, -1, -1)
        raise ValueError(f"images have {x.shape[1]} channels; the VAE takes {want} (or give 1-channel images)")

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """(N, C, H, W) images in [-1, 1] → un-normalised latents (posterior mean), float32 on CPU."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        out = []
        for start in tqdm(range(0, len(images), batch_size), desc="encoding latents", disable=not progress, leave=False):
            x = self._to_vae(images[start:start + batch_size].to(self.device, torch.float32))
            out.append(self.vae.encode(x).latent_dist.mean.float().cpu())
        return torch.cat(out)

    def fit(self, latents: torch.Tensor) -> "LatentCodec":
        """Per-channel mean/std of un-normalised latents (N, C, h, w)."""
        self.mean = latents.mean(dim=(0, 2, 3))
        self.std = latents.std(dim=(0, 2, 3)).clamp_min(1e-8)
        return self

    def _check_fitted(self):
        if self.mean is None:
            raise RuntimeError("LatentCodec has no latent statistics; call fit() or load() first")

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return (z - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1) * self.sigma_data

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return z / self.sigma_data * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)

    def encode(self, images: torch.Tensor, batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Images in [-1, 1] → normalised latents (std ≈ σ_data per channel)."""
        return self.normalise(self.encode_raw(images, batch_size, progress))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, channels: int = 1, batch_size: int = 32) -> torch.Tensor:
        """Normalised latents → images in [-1, 1] with ``channels`` channels (RGB averaged to 1)."""
        out = []
        for start in range(0, len(z), batch_size):
            x = self.vae.decode(self.denormalise(z[start:start + batch_size].float()).to(self.device)).sample.float().cpu()
            if channels == 1 and x.shape[1] != 1:
                x = x.mean(dim=1, keepdim=True)
            out.append(x.clamp(-1, 1))
        return torch.cat(out)

    def save(self, path: str | os.PathLike) -> None:
        """Latent statistics (JSON; the VAE itself stays where ``vae_path`` points)."""
        atomic_write_json(path, {"mean": self.mean.tolist(), "std": self.std.tolist(), "sigma_data": self.sigma_data})

    @classmethod
    def load(cls, vae, path: str | os.PathLike) -> "LatentCodec":
        stats = json.loads(Path(path).read_text())
        return cls(vae, stats["mean"], stats["std"], stats["sigma_data"])
