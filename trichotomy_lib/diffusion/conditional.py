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


def conditional_sampler(net, conditions, key: str, *, labels=None, guide_net=None, codec=None, solver: str = "dpm",
                        steps: int = 10, batch_size: int = 256, progress: bool = False, precision: str = "fp32",
                        label_guidance: float | None = None, **schedule) -> Callable:
    """``fn(sources (n,) int, seeds (n,) int, guidance float) → (n, 1, H, W)`` in [-1, 1].

    Args:
        net: the trained ``Denoiser`` (EMA weights, eval mode).
        conditions: (N_sources, L) labels (``key="labels"``) or (N_sources, D) embeddings
            (``key="embedding"``), indexed by source.
        labels: None, or with ``key="embedding"`` the (N_sources, L) labels of the same sources,
            given to the network beside the embedding (a joint network's two inputs at once; the
            guide drops both).
        guide_net: None = classifier-free guidance with ``net``'s unconditional mode; a network =
            that network as the guide (separate unconditional model, or autoguidance).
        codec: a ``LatentCodec`` for latent diffusion (decodes to pixels), None in pixel space.
        solver, steps: "dpm" (N evaluations) or "heun" (2N − 1); N >= 2.
        batch_size: samples per forward pass (does not change any image).
        precision: of the network evaluations, "fp32", "bf16" or "auto" (``sample``).
        label_guidance: with ``labels``, the labels' own guidance scale w_y (``sample``); None = one
            scale, the ``guidance`` given to ``fn``.
        schedule: sigma_min, sigma_max, rho of the EDM schedule (defaults of ``sample``).
    """
    if key not in ("labels", "embedding"):
        raise ValueError(f"key must be 'labels' or 'embedding', got {key!r}")
    cond_all = {key: torch.as_tensor(np.asarray(conditions), dtype=torch.float32)}
    if labels is not None:
        if key != "embedding":
            raise ValueError(f"labels are an extra condition of key='embedding', got key={key!r}")
        cond_all["labels"] = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    if label_guidance is not None and labels is None:
        raise ValueError("label_guidance needs labels beside the embedding")
    for name, c in cond_all.items():
        if c.ndim != 2 or len(c) != len(cond_all[key]):
            raise ValueError(f"{name} conditions must be 2-D (sources, features) with one row per source "
                             f"({len(cond_all[key])}), got shape {tuple(c.shape)}")

    def fn(sources, seeds, guidance):
        rows = torch.as_tensor(np.asarray(sources), dtype=torch.long)
        x = sample(net, {k: c[rows] for k, c in cond_all.items()}, seeds, steps=steps,
                   guidance=guidance, guide_net=guide_net if guidance != 1.0 else None, solver=solver,
                   batch_size=batch_size, clamp=codec is None, progress=progress, precision=precision,
                   label_guidance=label_guidance, **schedule)
        return codec.decode(x) if codec is not None else x

    return fn
