"""The raw denoiser network F_θ(c_in·x; c_noise, labels, embedding) (DESIGN step 5).

A small U-Net built for the two regimes the project runs in, with every choice measured
(``benchmarks/denoiser.py``, report in the notebook 04 prose):

* **Drop resolution first.** The input is folded 2×2 into channels (``patch_size=2``,
  pixel-unshuffle) before the first convolution and unfolded after the last one, so the
  highest-resolution feature map of a 32 px image is 16×16. On 2 CPU cores the 32×32 level
  of a diffusers ``UNet2DModel`` costs most of its time (and most of it memory-bound
  GroupNorm/SiLU, not FLOPs); a 2×2 patch costs little quality for smooth radiographs.
* **Attention only at the lowest resolution** (and in the middle block), where it is cheap
  (16–64 tokens) and buys global layout (left/right lung, heart position).
* **Channels where they buy quality**: wider at the coarse levels, narrow at the fine one.
* **Normalisation**: GroupNorm with few groups (``norm_groups``), modulated by the
  noise/condition embedding (scale and shift, "AdaGN"), which is what lets one network serve
  every σ and every conditioning mode.

Conditioning (all optional, chosen by the config):

* ``label_dim`` > 0: a multi-hot (N, label_dim) vector (class conditioning), projected by a
  linear layer into the embedding. All zeros = "no label" (what label dropout feeds).
* ``embed_dim`` > 0: a real image's embedding (N, embed_dim) — DiADM pseudo-conditioning.
  It is L2-normalised and scaled by sqrt(embed_dim) here (idempotent for the encoder's
  output), projected by a linear layer and added to the noise embedding. All zeros = dropped.

This module is only F_θ; the EDM preconditioning that turns it into D_θ lives in ``edm.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _norm(groups: int, channels: int) -> nn.Module:
    if groups <= 0:
        return nn.Identity()
    g = math.gcd(groups, channels)
    return nn.GroupNorm(g, channels, eps=1e-5)


class Linear(nn.Linear):
    """``nn.Linear`` that, in eval mode, computes each row on its own (broadcast multiply + sum).

    A BLAS matrix product picks its kernel by the number of rows, so row i of ``x @ W.T`` can
    differ in the last bit between a batch of 2 and a batch of 6. Sampling must give the same
    image for a seed whatever the batch, so at inference the (tiny) embedding layers use a
    reduction whose order does not depend on the batch size. Training uses the fast GEMM.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        out = (x.unsqueeze(-2) * self.weight).sum(-1)
        return out + self.bias if self.bias is not None else out


class FourierNoiseEmbedding(nn.Module):
    """c_noise → [cos(2π f_k c), sin(2π f_k c)] with fixed geometric frequencies f_k.

    c_noise = ln(σ)/4 spans about [-1.6, 1.1] for σ in [0.002, 80]; frequencies from 1/8 to
    16 cycles per unit resolve it finely without random (seed-dependent) buffers.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"noise embedding dim must be even, got {dim}")
        freqs = torch.exp(torch.linspace(math.log(0.125), math.log(16.0), dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * c_noise.float()[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3 → AdaGN(emb) → SiLU → dropout → conv3, plus a (1×1) skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, norm_groups: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(norm_groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(norm_groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (residual)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1))
        h = self.conv2(self.dropout(h))
        return (self.skip(x) + h) * (1 / math.sqrt(2))  # keep the residual sum's variance ~1


class Attention(nn.Module):
    """Multi-head self-attention over the H·W positions (used only at the lowest resolution)."""

    def __init__(self, channels: int, head_dim: int, norm_groups: int):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = _norm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, hw, c/heads)
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return (x + self.proj(out)) * (1 / math.sqrt(2))


class Denoiser(ModelMixin, ConfigMixin):
    """The raw network F_θ of EDM (Karras et al. 2022, eq. 7): ``forward(x_in, c_noise, labels, embedding)``.

    Args (all saved in ``config.json`` by ``save_pretrained``):
        in_channels: image/latent channels (1 for grayscale pixels, 4 for SD latents).
        sample_size: spatial size (H = W); must be divisible by patch_size · 2^(levels-1).
        patch_size: fold p×p pixels into channels first (1 = none, 2 = default).
        channels: width per resolution level, highest resolution first (default (64, 128, 128)).
        blocks: residual blocks per level in the encoder (decoder has one more), default 1.
        attn_levels: which levels (indices into ``channels``) get self-attention; default the
            last (lowest resolution). The middle block always has one.
        emb_dim: width of the noise/condition embedding (default 4·channels[0]).
        label_dim: length of the class vector (0 = no class input; 8 for the paper's findings).
        embed_dim: length of the pseudo-conditioning embedding (0 = no embedding input).
        norm_groups: GroupNorm groups (0 = no normalisation), default 8.
        dropout: dropout inside residual blocks, in [0, 1), default 0.
        head_dim: channels per attention head, default 32.
        sigma_data: σ_data of the training data (0.5 for images in [-1, 1] and for latents
            normalised to it); stored here so a saved model carries its preconditioning.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        sample_size: int = 32,
        patch_size: int = 2,
        channels: tuple = (64, 128, 128),
        blocks: int = 1,
        attn_levels: tuple = (-1,),
        emb_dim: int | None = None,
        label_dim: int = 0,
        embed_dim: int = 0,
        norm_groups: int = 8,
        dropout: float = 0.0,
        head_dim: int = 32,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        levels = len(channels)
        if sample_size % (patch_size * 2 ** (levels - 1)):
            raise ValueError(f"sample_size={sample_size} must be divisible by patch_size·2^(levels-1) = {patch_size * 2 ** (levels - 1)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout} must be in [0, 1)")
        attn = {a % levels for a in attn_levels}
        emb_dim = int(emb_dim or 4 * channels[0])
        self.levels = levels

        # Embedding of (σ, labels, embedding): Fourier(c_noise) → MLP, conditions added in.
        self.noise_fourier = FourierNoiseEmbedding(channels[0])
        self.noise_mlp = nn.Sequential(Linear(channels[0], emb_dim), nn.SiLU(), Linear(emb_dim, emb_dim))
        self.label_proj = Linear(label_dim, emb_dim, bias=False) if label_dim else None
        self.embed_proj = Linear(embed_dim, emb_dim, bias=False) if embed_dim else None
        self.emb_out = Linear(emb_dim, emb_dim)

        # Encoder: patchify → stem → [blocks (+attn), downsample] per level.
        cin = in_channels * patch_size**2
        self.stem = nn.Conv2d(cin, channels[0], 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [channels[0]]
        c = channels[0]
        for level, width in enumerate(channels):
            for _ in range(blocks):
                self.enc.append(self._unit(c, width, emb_dim, level in attn))
                c = width
                skips.append(c)
            if level < levels - 1:
                self.enc.append(nn.AvgPool2d(2))
                skips.append(c)
        self.mid = nn.ModuleList([self._unit(c, c, emb_dim, True), self._unit(c, c, emb_dim, False)])
        # Decoder: per level (lowest first) blocks+1 units consuming the skips, then upsample.
        self.dec = nn.ModuleList()
        for level in reversed(range(levels)):
            width = channels[level]
            for _ in range(blocks + 1):
                self.dec.append(self._unit(c + skips.pop(), width, emb_dim, level in attn))
                c = width
            if level > 0:
                self.dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = _norm(norm_groups, c)
        self.out = nn.Conv2d(c, in_channels * patch_size**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # F_θ = 0 at init → D_θ(x) = c_skip·x
        nn.init.zeros_(self.out.bias)

    def _unit(self, cin, cout, emb_dim, attn):
        cfg = self.config
        block = ResBlock(cin, cout, emb_dim, cfg.norm_groups, cfg.dropout)
        return nn.ModuleList([block, Attention(cout, cfg.head_dim, cfg.norm_groups)] if attn else [block])

    # -- conditioning ------------------------------------------------------------------------
    def check_condition(self, n: int, labels, embedding) -> None:
        """Raise a clear error when a condition has the wrong shape or is given to a network
        that has no input for it."""
        cfg = self.config
        for name, value, dim in (("labels", labels, cfg.label_dim), ("embedding", embedding, cfg.embed_dim)):
            if value is None:
                continue
            if dim == 0:
                raise ValueError(f"this denoiser has no {name} input ({'label_dim' if name == 'labels' else 'embed_dim'}=0) "
                                 f"but {name} of shape {tuple(value.shape)} were given")
            if tuple(value.shape) != (n, dim):
                raise ValueError(f"{name} must have shape ({n}, {dim}) for a batch of {n}, got {tuple(value.shape)}")

    def embed(self, c_noise, labels=None, embedding=None) -> torch.Tensor:
        emb = self.noise_mlp(self.noise_fourier(c_noise))
        dtype = emb.dtype
        if labels is not None:
            emb = emb + self.label_proj(labels.to(dtype))
        if embedding is not None:
            e = embedding.to(dtype)
            # DiADM: embedding L2-normalised × sqrt(dim); a dropped (all-zero) one stays zero.
            e = e * (math.sqrt(e.shape[1]) / e.norm(dim=1, keepdim=True).clamp_min(1e-8))
            emb = emb + self.embed_proj(e)
        return F.silu(self.emb_out(F.silu(emb)))

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels=None, embedding=None) -> torch.Tensor:
        """F_θ(x; c_noise, labels, embedding) with x already scaled by c_in. Shapes: x (N, C, H, W),
        c_noise (N,), labels (N, label_dim) or None, embedding (N, embed_dim) or None."""
        cfg = self.config
        n = x.shape[0]
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % (cfg.patch_size * 2 ** (self.levels - 1)) \
                or x.shape[3] % (cfg.patch_size * 2 ** (self.levels - 1)):
            raise ValueError(f"x must be (N, {cfg.in_channels}, H, W) with H, W divisible by "
                             f"{cfg.patch_size * 2 ** (self.levels - 1)}, got {tuple(x.shape)}")
        if c_noise.shape != (n,):
            raise ValueError(f"c_noise must have shape ({n},), got {tuple(c_noise.shape)}")
        self.check_condition(n, labels, embedding)
        emb = self.embed(c_noise, labels, embedding)

        h = F.pixel_unshuffle(x, cfg.patch_size) if cfg.patch_size > 1 else x
        h = self.stem(h)
        skips = [h]
        for unit in self.enc:
            h = self._run(unit, h, emb)
            skips.append(h)
        for unit in self.mid:
            h = self._run(unit, h, emb)
        for unit in self.dec:
            if isinstance(unit, nn.Upsample):
                h = unit(h)
            else:
                h = self._run(unit, torch.cat([h, skips.pop()], dim=1), emb)
        h = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, cfg.patch_size) if cfg.patch_size > 1 else h

    @staticmethod
    def _run(unit, h, emb):
        if isinstance(unit, nn.AvgPool2d):
            return unit(h)
        h = unit[0](h, emb)
        return unit[1](h) if len(unit) > 1 else h
