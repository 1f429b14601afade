"""Exponential moving average of the weights — what gets sampled (the paper's code sampled the raw
weights by mistake).

Half-life in training images (EDM, Karras et al. 2022, App. F): after each step of B images
    θ_ema ← β·θ_ema + (1 − β)·θ,    β = 0.5^(B / h),
with the half-life ramped up early, h = min(halflife_images, rampup · images_seen), so the
average forgets the random initialisation quickly (EDM: rampup 0.05; None disables it).
"""

from __future__ import annotations

import copy

import torch


def ema_beta(batch_images: int, images_seen: int, halflife_images: float, rampup: float | None) -> float:
    """β for one step of ``batch_images`` after ``images_seen`` images (see module docstring)."""
    h = float(halflife_images)
    if rampup is not None:
        h = min(h, rampup * images_seen)
    return 0.5 ** (batch_images / max(h, 1e-8))


def make_ema(net: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``net`` (eval mode, no gradients) to hold the averaged weights."""
    ema = copy.deepcopy(net).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float) -> None:
    """θ_ema ← β θ_ema + (1 − β) θ for parameters; buffers are copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)
