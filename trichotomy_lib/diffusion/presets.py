"""Presets as plain dicts (EDM2 style): network shape, training and sampling per profile size.

A profile's ``diffusion.preset`` picks one; ``diffusion.network`` / ``diffusion.train`` /
``diffusion.sampler`` override single keys. ``label_dim`` / ``embed_dim`` are not set here:
they follow from the conditioning mode of each model (stage ``diffusion``).

Why these shapes (measurements in notebook 04 and ``benchmarks/denoiser.py``, 2 CPU cores):
* ``default`` (32 px, CPU): fold 2×2 pixels into channels first, levels at 16/8/4 px with
  (32, 64, 128) channels, attention only at 4×4 and in the middle: 0.15 GFLOP per sample
  forward, 2.6 M parameters — vs 0.51 GFLOP and 1.1 M for a diffusers UNet2DModel
  (32, 64, 64), which spends its FLOPs (and its memory-bound GroupNorm/SiLU/
  attention time) at 32×32. Without the patch folding the same network costs 0.60 GFLOP;
  (64, 128, 128) costs 0.39, two blocks per level 0.23. Both measured networks reach ~50% of
  a 2048² fp32 matmul's FLOP/s in a training step, so FLOPs translate into time.
  Batch 32 × 3000 steps (~100 passes over the 970 training images): ~6 min on 2 idle cores in
  bf16 (``mixed_precision`` auto on an AVX-512 BF16 CPU), ~8 in fp32.
  The budget matters for the method: at 900 steps a pseudo-conditional sample's source ranks
  ~24th of 970 in the encoder's space and the auditor re-identifies it as often as a random
  image (10 %); at 3000 the source ranks first for 56 % and the auditor links 35 % (w = 1.4,
  300 sources) — the identity leak the paper's filter exists for, and a better generator for
  the utility table.
* ``paper`` (4×64×64 SD-VAE latents, GPU): about EDM2-XS width (128·[1, 2, 3, 4]), 3 blocks
  per level, attention at 16×16 and 8×8, no patch folding; the paper's P_mean/P_std, Adam
  betas and ~84 M training images. Learning rate 1e-4: EDM2's 1.2e-2 belongs to its
  magnitude-preserving layers, which this network does not have.
"""

from __future__ import annotations

import copy

NETWORK_PRESETS: dict[str, dict] = {
    "smoke": dict(patch_size=2, channels=(16, 32), blocks=1, attn_levels=(-1,), norm_groups=4, head_dim=16),
    "default": dict(patch_size=2, channels=(32, 64, 128), blocks=1, attn_levels=(-1,), norm_groups=8, head_dim=32),
    "paper": dict(patch_size=1, channels=(128, 256, 384, 512), blocks=3, attn_levels=(2, 3), norm_groups=32,
                  head_dim=64, dropout=0.0),
}

TRAIN_PRESETS: dict[str, dict] = {
    "smoke": dict(steps=40, batch_size=32, lr=2e-3, lr_warmup_steps=10, ema_halflife_images=500, ema_rampup=0.2,
                  checkpoint_every=20, guide_step=20),
    "default": dict(steps=3000, batch_size=32, lr=2e-3, lr_warmup_steps=50, lr_decay_steps=1300,
                    ema_halflife_images=4_000, ema_rampup=0.2, checkpoint_every=100, guide_step=200),
    # paper: ~84 M images at batch 2048 ≈ 41,000 steps; guide = the 8 M-image checkpoint (autoguidance)
    "paper": dict(steps=41_000, batch_size=2048, lr=1e-4, lr_warmup_steps=1000, lr_decay_steps=35_000,
                  p_mean=-0.4, p_std=1.0, ema_halflife_images=2_000_000, ema_rampup=0.05, checkpoint_every=500,
                  guide_step=3_900, mixed_precision="bf16"),
}

SAMPLER_PRESETS: dict[str, dict] = {
    "smoke": dict(solver="dpm", steps=8, guidance=1.0, sigma_min=0.002, sigma_max=80.0, rho=7.0),
    "default": dict(solver="dpm", steps=16, guidance=1.0, sigma_min=0.002, sigma_max=80.0, rho=7.0),
    # the paper: EDM Heun, 32 steps (63 evaluations), σ 0.002–80, ρ 7, w 1.2–1.4
    "paper": dict(solver="heun", steps=32, guidance=1.4, sigma_min=0.002, sigma_max=80.0, rho=7.0),
}


def _get(table: dict, name: str, what: str) -> dict:
    if name not in table:
        raise ValueError(f"unknown diffusion preset {name!r} for {what}; known: {sorted(table)}")
    return copy.deepcopy(table[name])


def network_preset(name: str) -> dict:
    return _get(NETWORK_PRESETS, name, "the network")


def train_preset(name: str) -> dict:
    return _get(TRAIN_PRESETS, name, "training")


def sampler_preset(name: str) -> dict:
    return _get(SAMPLER_PRESETS, name, "sampling")
