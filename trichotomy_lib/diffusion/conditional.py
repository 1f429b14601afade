"""Conditional sampling as the releases use it: one function of (sources, seeds, guidance).

``conditional_sampler`` closes over a trained denoiser, the per-source conditions and the
sampler settings and returns ``fn(sources, seeds, guidance) → images``: sample i is drawn from
seed i, conditioned on row ``sources[i]`` of ``conditions`` (labels for class conditioning,
embeddings for DiADM pseudo-conditioning), with guidance

    D_w(x; σ, c) = D_guide(x; σ) + w · (D(x; σ, c) − D_guide(x; σ))

where the guide is the network's own unconditional mode (classifier-free guidance), a separate
unconditional network, or an early checkpoint (autoguidance). Latents are decoded to pixels.
Because every sample has its own seed, the images do not depend on how sources are batched.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .sampler import sample

__all__ = ["conditional_sampler"]


def conditional_sampler(net, conditions, key: str, *, guide_net=None, codec=None, solver: str = "dpm",
                        steps: int = 10, batch_size: int = 256, progress: bool = False,
                        **schedule) -> Callable:
    """``fn(sources (n,) int, seeds (n,) int, guidance float) → (n, 1, H, W)`` in [-1, 1].

    Args:
        net: the trained ``Denoiser`` (EMA weights, eval mode).
        conditions: (N_sources, L) labels (``key="labels"``) or (N_sources, D) embeddings
            (``key="embedding"``), indexed by source.
        guide_net: None = classifier-free guidance with ``net``'s unconditional mode; a network =
            that network as the guide (separate unconditional model, or autoguidance).
        codec: a ``LatentCodec`` for latent diffusion (decodes to pixels), None in pixel space.
        solver, steps: "dpm" (N evaluations) or "heun" (2N − 1); N >= 2.
        batch_size: samples per forward pass (does not change any image).
        schedule: sigma_min, sigma_max, rho of the EDM schedule (defaults of ``sample``).
    """
    if key not in ("labels", "embedding"):
        raise ValueError(f"key must be 'labels' or 'embedding', got {key!r}")
    cond_all = torch.as_tensor(np.asarray(conditions), dtype=torch.float32)
    if cond_all.ndim != 2:
        raise ValueError(f"conditions must be 2-D (sources, features), got shape {tuple(cond_all.shape)}")

    def fn(sources, seeds, guidance):
        x = sample(net, {key: cond_all[torch.as_tensor(np.asarray(sources), dtype=torch.long)]}, seeds, steps=steps,
                   guidance=guidance, guide_net=guide_net if guidance != 1.0 else None, solver=solver,
                   batch_size=batch_size, clamp=codec is None, progress=progress, **schedule)
        return codec.decode(x) if codec is not None else x

    return fn
