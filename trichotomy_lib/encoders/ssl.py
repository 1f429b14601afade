"""The in-project self-supervised encoder: SimCLR (Chen et al. 2020) on the training split.

The paper conditions on SwAV/Inception features of ImageNet-pretrained networks. No weights
can be downloaded here, so the default encoder is learnt from the training images alone by
instance discrimination: two random *views* of each image in a batch must be closer to each
other than to any view of another image (NT-Xent loss, eq. 2 below). What the views share is
what the embedding keeps, so the augmentations decide what the encoder may ignore:

* made invariant to: small shifts (±``shift`` of the width), rotations (±``rotate`` degrees)
  and zoom (±``scale``) — patient positioning; collimation (up to ``collimate`` of the width
  blacked out at each edge, outside the lung fields); brightness, contrast and gamma —
  exposure and detector; additive Gaussian noise — quantum noise. These are the nuisances
  that differ between two scans of one patient, so what survives them is largely the
  patient's stable anatomy — identity — plus the findings.
* NOT made invariant to: horizontal flips. The heart sits on the patient's left, and the side
  of a finding (effusion, pneumothorax) is part of it; a flipped radiograph is anatomically
  wrong (situs inversus), so flipping would teach the encoder to discard laterality. No
  crops/erasing either: a finding occupies a small part of the lung field and cutting it out
  would make the two views disagree on the label.

Optionally the encoder is also told what to keep: with ``label_weight`` λ > 0 a linear head
reads the findings from the embedding itself (eq. 1 of ``encoders.base``, radius sqrt(D)) and its
binary cross-entropy joins the loss,

    L = NT-Xent(g(f(v1)), g(f(v2))) + λ · ½ Σ_v BCE(W e(v) + b, y),                         (3)

y the image's labels (the training split's own labels, which every release carries anyway). The
views differ in pose, exposure and collimation but share y, so the findings become directions of
large variance in e while pose is still made invisible. This matters for DiADM: isotropic noise
on the condition (``privacy.generation.noisy_conditions``) blurs every direction alike, so the
more of e's length the findings hold, the more of them survive the noise that blurs identity.

The network has no batch statistics (GroupNorm), so an embedding depends only on its image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import seeds
from .base import normalize_embeddings

# Hyperparameters (EDM2 style: a preset is a plain dict; the stage section overrides keys).
SSL_DEFAULTS: dict = {
    "dim": 128,                 # embedding dimension D (>= 2; 128–256 on CPU, 2048 in the paper)
    "channels": [32, 64, 128],  # conv widths; each stage after the first halves the resolution
    "proj_dim": 64,             # projection-head output used by the loss only (SimCLR's g(·))
    "temperature": 0.1,         # NT-Xent temperature τ (0 < τ; 0.1–0.5 usual; 0.1 beat 0.2 here on identity and probe)
    "batch_size": 256,          # images per step (2 views each → 2B rows in the loss)
    "steps": 400,               # optimiser steps
    "lr": 2e-3,                 # peak Adam learning rate (linear warm-up 5 %, cosine decay)
    "weight_decay": 1e-4,
    "label_weight": 0.0,        # λ of eq. 3, >= 0: weight of the findings head's BCE (0: SimCLR alone; 1–4 tried)
    "checkpoint_every": 100,    # steps between resumable checkpoints (0: never)
    "augment": {
        "shift": 0.08,          # max translation, fraction of the image width
        "rotate": 8.0,          # max rotation, degrees
        "scale": 0.10,          # max zoom in/out, fraction
        "brightness": 0.10,     # max additive offset, on [0, 1] intensities
        "contrast": 0.30,       # max multiplicative contrast change, fraction
        "gamma": 0.30,          # max |log gamma|
        "noise": 0.04,          # max Gaussian noise std, on [0, 1] intensities
        "collimate": 0.10,      # max blacked-out border per edge, fraction of the width
    },
}


# --------------------------------------------------------------------------- network
class SSLNet(nn.Module):
    """Small CNN f(x) (the embedding) plus SimCLR projection head g(f(x)) (the loss only).

    A 4×4 stride-2 "patchify" stem, one stride-2 3×3 conv per further width (32 px → 16 → 8 →
    4 with three widths), a 4×4 average pool that keeps the coarse layout (heart size and
    position are findings), then a linear map to ``dim``. Every layer halves the resolution:
    on CPU a full-resolution stem costs several times more for no gain here.
    """

    def __init__(self, image_size: int, channels=(32, 64, 128), dim: int = 128, proj_dim: int = 64,
                 n_labels: int = 0):
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels or any(c < 8 or c % 8 for c in channels):
            raise ValueError(f"encoder.channels must be a non-empty list of multiples of 8, got {channels}")
        if dim < 2 or proj_dim < 2:
            raise ValueError(f"encoder.dim and encoder.proj_dim must be >= 2, got {dim}, {proj_dim}")
        if image_size < 4 * 2 ** len(channels):
            raise ValueError(f"image_size {image_size} too small for {len(channels)} stages (needs >= {4 * 2 ** len(channels)})")
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            conv = nn.Conv2d(c_in, c, 4, stride=2, padding=1) if i == 0 else nn.Conv2d(c_in, c, 3, stride=2, padding=1)
            layers += [conv, nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(c_in * 16, dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj_dim))
        # the findings head of eq. 3 (training only, like g); absent when the encoder is SimCLR alone
        self.findings = nn.Linear(dim, n_labels) if n_labels else None
        self.image_size, self.dim, self.n_labels = int(image_size), int(dim), int(n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): the representation the embeddings are made of (un-normalised)."""
        return self.fc(self.body(x))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """g(h): the projection the contrastive loss is computed on."""
        return self.head(h)


# --------------------------------------------------------------------------- views
def check_augment(aug: dict) -> dict:
    """``aug`` over the defaults, refusing unknown keys and negative magnitudes."""
    defaults = SSL_DEFAULTS["augment"]
    unknown = sorted(set(aug) - set(defaults))
    if unknown:
        raise ValueError(f"unknown key(s) in 'encoder.augment': {unknown}; known: {sorted(defaults)}")
    merged = {**defaults, **aug}
    bad = {k: v for k, v in merged.items() if not (isinstance(v, (int, float)) and v >= 0)}
    if bad:
        raise ValueError(f"encoder.augment values must be numbers >= 0, got {bad}")
    return merged


def augment(x: torch.Tensor, generator: torch.Generator, aug: dict | None = None) -> torch.Tensor:
    """One random view of each image: float (n, 1, H, W) in [-1, 1] → same shape, in [-1, 1].

    Geometry (shift, rotation, zoom; border padding), collimation (black edges), then
    intensity (gamma, contrast, brightness, noise), every magnitude drawn per image from
    ``generator`` (on ``x.device``).
    No flips and no crops (see the module docstring for why).
    """
    aug = check_augment(aug or {})
    n, dev = x.shape[0], x.device

    def uniform(scale):  # U(-scale, scale), one per image
        return (torch.rand(n, generator=generator, device=dev) * 2 - 1) * scale

    angle = uniform(math.radians(aug["rotate"]))
    zoom = 1 + uniform(aug["scale"])
    shift = torch.stack([uniform(2 * aug["shift"]), uniform(2 * aug["shift"])], 1)  # grid coords span 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    u = (F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False) + 1) / 2

    h, w = x.shape[-2:]
    edges = torch.rand(n, 4, generator=generator, device=dev) * aug["collimate"]  # top, bottom, left, right
    rows = (torch.arange(h, device=dev) + 0.5) / h
    cols = (torch.arange(w, device=dev) + 0.5) / w
    keep_r = (rows[None] >= edges[:, :1]) & (rows[None] <= 1 - edges[:, 1:2])
    keep_c = (cols[None] >= edges[:, 2:3]) & (cols[None] <= 1 - edges[:, 3:4])
    u = u * (keep_r[:, :, None] & keep_c[:, None, :]).unsqueeze(1)

    u = u.clamp(0, 1) ** torch.exp(uniform(aug["gamma"])).view(n, 1, 1, 1)
    mean = u.mean(dim=(1, 2, 3), keepdim=True)
    u = (u - mean) * (1 + uniform(aug["contrast"])).view(n, 1, 1, 1) + mean + uniform(aug["brightness"]).view(n, 1, 1, 1)
    sigma = torch.rand(n, generator=generator, device=dev).view(n, 1, 1, 1) * aug["noise"]
    u = u + sigma * torch.randn(u.shape, generator=generator, device=dev)
    return u.clamp(0, 1) * 2 - 1


# --------------------------------------------------------------------------- loss
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR eq. 1), averaged over all 2n anchors.

        ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k ≠ i} exp(sim(z_i, z_k)/τ)              (2)

    with sim the cosine similarity, (i, j) the two views of one image, and the sum over the
    other 2n − 1 rows of the batch (the other view and 2(n − 1) negatives).
    """
    if z1.shape != z2.shape or z1.ndim != 2 or len(z1) < 2:
        raise ValueError(f"z1, z2 must both be (n >= 2, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits.fill_diagonal_(float("-inf"))  # k ≠ i
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


# --------------------------------------------------------------------------- training
def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 0."""
    warm = max(1, int(0.05 * steps))
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def build_net(hp: dict, image_size: int) -> SSLNet:
    """The network of ``hp``; ``hp["n_labels"]`` (default 0) sizes the findings head of eq. 3."""
    return SSLNet(image_size, hp["channels"], hp["dim"], hp["proj_dim"], int(hp.get("n_labels", 0)))


def findings_loss(net: SSLNet, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The BCE term of eq. 3 for one view: the findings head on the normalised embedding e(h)."""
    return F.binary_cross_entropy_with_logits(net.findings(normalize_embeddings(h)), y)


def train_ssl(images: torch.Tensor, hp: dict, seed: int, device=None, checkpoint=None, progress: bool = True,
              labels=None):
    """Train ``SSLNet`` with NT-Xent on two views of each image (+ eq. 3's findings term when
    ``hp["label_weight"]`` > 0); returns ``(net, losses)``.

    Args:
        images: float (N, 1, H, W) in [-1, 1], N >= 2 (the training split).
        hp: hyperparameters (``SSL_DEFAULTS`` keys; missing ones take the defaults).
        labels: (N, L) multi-hot labels of ``images``; required when ``label_weight`` > 0,
            ignored otherwise. The net's findings head gets L outputs (``net.n_labels``).
        seed: every random choice (init, batches, views) derives from it.
        device: torch device (default ``device.default_device()``).
        checkpoint: optional ``ssl.Checkpoint``; training saves to it every ``checkpoint_every``
            steps and resumes from it (bit-identically on the same device).
        progress: tqdm bar.

    Returns:
        the trained net (eval mode, on ``device``) and the per-step losses (list of float).
    """
    from ..device import default_device
    from .base import check_images

    hp = {**SSL_DEFAULTS, **hp, "augment": check_augment(hp.get("augment") or {})}
    check_images(images)
    if len(images) < 2:
        raise ValueError(f"contrastive training needs at least 2 images, got {len(images)}")
    for key in ("steps", "batch_size"):
        if int(hp[key]) < 1:
            raise ValueError(f"encoder.{key} must be >= 1, got {hp[key]}")
    weight = hp["label_weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"encoder.label_weight must be a number >= 0, got {weight!r}")
    y = None
    if weight > 0:
        if labels is None:
            raise ValueError("encoder.label_weight > 0 needs the images' labels (train_ssl(..., labels=...))")
        y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
        if y.ndim != 2 or len(y) != len(images) or y.shape[1] < 1:
            raise ValueError(f"labels must be (N={len(images)}, L >= 1), got {tuple(y.shape)}")
        if not torch.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0/1 (multi-hot findings)")
    device = torch.device(device) if device is not None else default_device()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.derive(seed, "encoder", "init"))
        net = build_net({**hp, "n_labels": 0 if y is None else y.shape[1]}, images.shape[-1])
    net = net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    batch_gen = seeds.torch_generator(seed, "encoder", "batches")
    view_gen = seeds.torch_generator(seed, "encoder", "views", device=device)
    losses: list[float] = []
    start = 0
    if checkpoint is not None and checkpoint.exists():
        start, losses = checkpoint.load(net, opt, batch_gen, view_gen)
    batch = min(int(hp["batch_size"]), len(images))
    steps = int(hp["steps"])
    bar = tqdm(range(start, steps), desc="encoder (SimCLR)", disable=not progress, initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, hp["lr"])
        idx = torch.randperm(len(images), generator=batch_gen)[:batch]
        x = images[idx].to(device)
        v1, v2 = augment(x, view_gen, hp["augment"]), augment(x, view_gen, hp["augment"])
        h1, h2 = net(v1), net(v2)
        loss = nt_xent(net.project(h1), net.project(h2), hp["temperature"])
        if y is not None:  # eq. 3: both views carry the image's findings
            yb = y[idx].to(device)
            loss = loss + weight * 0.5 * (findings_loss(net, h1, yb) + findings_loss(net, h2, yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        every = int(hp["checkpoint_every"])
        if checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            checkpoint.save(step + 1, losses, net, opt, batch_gen, view_gen)
    return net.eval(), losses
