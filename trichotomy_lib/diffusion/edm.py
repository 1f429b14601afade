"""EDM preconditioning, noise-level distribution and loss (Karras et al. 2022, Table 1, "EDM" column).

The trained denoiser is

    D_θ(x; σ, c) = c_skip(σ)·x + c_out(σ)·F_θ(c_in(σ)·x; c_noise(σ), c)          (EDM eq. 7)

with, for data of standard deviation σ_data,

    c_skip(σ)  = σ_data² / (σ² + σ_data²)
    c_out(σ)   = σ·σ_data / sqrt(σ² + σ_data²)
    c_in(σ)    = 1 / sqrt(σ² + σ_data²)
    c_noise(σ) = ln(σ) / 4

trained on  E_{σ, y, n} [ λ(σ) · ‖D_θ(y + n; σ, c) − y‖² ]                      (EDM eq. 2, 8)
with ln σ ~ N(P_mean, P_std²) and λ(σ) = (σ² + σ_data²) / (σ·σ_data)²,
which makes the effective target of F_θ unit-variance at every σ.
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.5  # images in [-1, 1] (and latents normalised to it) have std ≈ 0.5


def preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) of EDM Table 1 for a tensor of σ > 0 (any shape)."""
    sigma = torch.as_tensor(sigma)
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)                      # Table 1: σ_data² / (σ² + σ_data²)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()  # Table 1: σ·σ_data / sqrt(σ² + σ_data²)
    c_in = 1 / (s2 + d2).sqrt()                  # Table 1: 1 / sqrt(σ² + σ_data²)
    c_noise = sigma.log() / 4                    # Table 1: ¼ ln σ
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """λ(σ) = (σ² + σ_data²) / (σ·σ_data)²  (EDM Table 1, "Loss weighting") = 1 / c_out(σ)²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels: ln σ ~ N(P_mean, P_std²) (EDM Table 1, "Noise distribution")."""
    return (torch.randn(n, generator=generator) * p_std + p_mean).exp()


def denoise(net, x: torch.Tensor, sigma, labels=None, embedding=None, sigma_data: float | None = None) -> torch.Tensor:
    """D_θ(x; σ, c) = c_skip·x + c_out·F_θ(c_in·x; c_noise, c)  (EDM eq. 7).

    ``sigma`` is a float or a (N,) tensor; ``net`` is a ``Denoiser`` (or anything with a
    ``config.sigma_data`` and the same forward signature; pass ``sigma_data`` for a wrapped
    network, e.g. under DistributedDataParallel). Computed in float32 at the ends.
    """
    n = x.shape[0]
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(n)
    if sigma.shape != (n,):
        raise ValueError(f"sigma must be a scalar or have shape ({n},), got {tuple(sigma.shape)}")
    sigma_data = float(net.config.sigma_data) if sigma_data is None else float(sigma_data)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    b = (n, 1, 1, 1)
    dtype = next(net.parameters()).dtype
    f = net((x * c_in.view(b)).to(dtype), c_noise, labels, embedding)
    return c_skip.view(b) * x + c_out.view(b) * f.float()


def edm_loss(net, y: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, labels=None, embedding=None,
             sigma_data: float | None = None) -> torch.Tensor:
    """Per-sample weighted loss λ(σ)·‖D_θ(y + σn; σ, c) − y‖² averaged over pixels (EDM eq. 2).

    σ and the unit noise n are passed in (drawn by the caller from its own generator), so the
    loss is a deterministic function of its inputs — the basis of bit-exact resume.
    """
    b = (y.shape[0], 1, 1, 1)
    sigma_data = float(net.config.sigma_data) if sigma_data is None else float(sigma_data)
    d = denoise(net, y + sigma.view(b) * noise, sigma, labels, embedding, sigma_data)
    per_pixel = loss_weight(sigma, sigma_data).view(b) * (d - y) ** 2
    return per_pixel.flatten(1).mean(1)
