"""Training loop: EDM loss, Adam with warm-up + inverse-sqrt decay, EMA, atomic resumable checkpoints.

Determinism and resume: every random draw of the loop (which images, σ, noise, which
conditions are dropped) comes from one CPU ``torch.Generator`` seeded with ``seed``; its state,
the global torch RNG state, the weights, the EMA, the optimizer state and the loss log go into
each checkpoint (one safetensors file, ``trichotomy_lib.checkpoint`` — no pickle). A run killed after a
checkpoint and resumed therefore ends with bit-identical weights to an uninterrupted run (on the
same device and software; tested on CPU).

Multi-GPU: the loop runs through ``trichotomy_lib.device.accelerator()``. Every process draws the
same global batch and takes its own slice, so the global batch (and the result, up to reduction
order) does not depend on the number of processes.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_training_state, save_training_state
from ..device import accelerator as get_accelerator
from ..device import autocast, default_device, native_bf16
from ..io import atomic_path, atomic_write_json
from .edm import edm_loss, sample_sigma
from .ema import ema_beta, make_ema, update_ema

# Every training hyperparameter, with its default (presets.py overrides them per profile).
TRAIN_DEFAULTS: dict = dict(
    steps=2000,               # optimizer steps (>= 1)
    batch_size=64,            # global batch (images per step, over all devices)
    lr=1e-3,                  # reference learning rate (Adam)
    lr_warmup_steps=100,      # linear warm-up from 0 (EDM2 style)
    lr_decay_steps=None,      # inverse-sqrt decay: lr / sqrt(max(step / lr_decay_steps, 1)); None = constant
    adam_betas=(0.9, 0.99),   # EDM2's Adam betas
    weight_decay=0.0,
    grad_clip=None,           # max gradient norm, or None
    p_mean=-1.2,              # ln σ ~ N(P_mean, P_std²): EDM pixel-space (CIFAR) values
    p_std=1.2,
    label_dropout=0.1,        # probability a sample's class vector is zeroed (unconditional)
    embed_dropout=0.1,        # probability its embedding is zeroed, independently
    embed_noise=0.0,          # σ >= 0, condition augmentation: each step sees sqrt(D)·(e + σn)/‖e + σn‖, n ~ N(0, I)
                              #   fresh per sample, instead of e, so the network learns p(x | a noised embedding) —
                              #   what DiADM asks it at sampling with generate.condition_noise = σ (0: e as it is)
    ema_halflife_images=20_000,  # EMA half-life in training images
    ema_rampup=0.1,           # EMA half-life ≤ rampup · images seen (None: no ramp-up)
    guide_step=None,          # keep the EMA at this step as the autoguidance guide (None: no guide)
    checkpoint_every=250,     # steps between checkpoints (and at the end)
    mixed_precision="auto",   # "auto" (bf16 where the device computes it natively, else fp32), "no", "bf16",
                              #   "fp16" (GPU only; a CPU trains fp16 in fp32). The network's forward and the loss
                              #   run under autocast; weights, Adam and the EMA stay fp32.
)
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf; the message says at which step and what to try."""


def check_hyperparameters(hp: dict) -> dict:
    """``TRAIN_DEFAULTS`` with ``hp`` on top; unknown keys and out-of-range values raise."""
    unknown = sorted(set(hp) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training hyperparameter(s) {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    hp = {**TRAIN_DEFAULTS, **hp}
    for key in ("steps", "batch_size", "checkpoint_every"):
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"train.{key} must be an integer >= 1, got {hp[key]!r}")
    if not hp["lr"] > 0:
        raise ValueError(f"train.lr must be > 0, got {hp['lr']}")
    for key in ("label_dropout", "embed_dropout"):
        if not 0 <= hp[key] <= 1:
            raise ValueError(f"train.{key} must be in [0, 1], got {hp[key]}")
    noise = hp["embed_noise"]
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"train.embed_noise must be a finite number >= 0, got {noise!r}")
    if hp["mixed_precision"] not in MIXED_PRECISIONS:
        raise ValueError(f"train.mixed_precision must be one of {list(MIXED_PRECISIONS)}, got {hp['mixed_precision']!r}")
    if hp["guide_step"] is not None and not 1 <= hp["guide_step"] <= hp["steps"]:
        raise ValueError(f"train.guide_step must be in 1..steps={hp['steps']} or null, got {hp['guide_step']}")
    return hp


def training_precision(mixed_precision: str, device: torch.device | str) -> str:
    """``train.mixed_precision`` → what the loop runs on ``device``: "fp32", "bf16" or "fp16".

    "auto" is "bf16" where ``device.native_bf16`` (a bf16 GPU, or a CPU with AVX-512 BF16 or
    AMX), else "fp32"; fp16 exists on GPUs only. On an AVX-512 BF16 CPU (2 threads) bf16 makes
    the default denoiser's training step 1.3x faster (``benchmarks/precision.py``)."""
    device = torch.device(device)
    if mixed_precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if mixed_precision == "no" or (mixed_precision == "fp16" and device.type == "cpu"):
        return "fp32"
    return mixed_precision


def learning_rate(step: int, hp: dict) -> float:
    """lr(t) = lr_ref · min(1, t / warmup) / sqrt(max(t / t_decay, 1))  (EDM2 eq. 16 style)."""
    lr = hp["lr"] * min(1.0, (step + 1) / max(hp["lr_warmup_steps"], 1))
    if hp["lr_decay_steps"]:
        lr /= math.sqrt(max(step / hp["lr_decay_steps"], 1.0))
    return lr


# ------------------------------------------------------------------------------ checkpoints
TRAINING_STATE_FILE = "training_state.safetensors"  # inside ``out_dir/checkpoints/``


def _save_training_state(ckpt_root: Path, step: int, net, ema, guide, opt, gen: torch.Generator, log: dict) -> Path:
    """The whole training state after ``step`` → ``ckpt_root/TRAINING_STATE_FILE`` (atomic; see
    ``trichotomy_lib.checkpoint``): weights, EMA, guide, Adam, the loop's and the global torch RNG."""
    modules = {"net": net, "ema": ema} | ({"guide": guide} if guide is not None else {})
    return save_training_state(ckpt_root / TRAINING_STATE_FILE, modules=modules, optimizers={"adam": opt},
                               generators={"loop": gen, "torch_global": torch.default_generator},
                               meta={"step": step, "log": log})


def write_log(out_dir: Path, log: dict) -> None:
    """``train_log.json`` and ``train_log.csv`` (step, images, lr, loss) — the loss curve."""
    atomic_write_json(out_dir / "train_log.json", log)
    with atomic_path(out_dir / "train_log.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "images", "lr", "loss"])
        writer.writerows(zip(log["step"], log["images"], log["lr"], log["loss"]))


# ------------------------------------------------------------------------------ the loop
def _check_data(net, images, labels, embeddings):
    cfg = net.config
    if images.ndim != 4 or tuple(images.shape[1:]) != (cfg.in_channels, cfg.sample_size, cfg.sample_size):
        raise ValueError(f"training images must be (N, {cfg.in_channels}, {cfg.sample_size}, {cfg.sample_size}), got {tuple(images.shape)}")
    n = images.shape[0]
    if labels is not None and cfg.label_dim == 0:
        labels = None  # this network has no class input (e.g. the 'uncond' or 'pseudo' model)
    if embeddings is not None and cfg.embed_dim == 0:
        embeddings = None
    if cfg.label_dim and labels is None:
        raise ValueError(f"the network has a class input (label_dim={cfg.label_dim}) but no labels were given")
    if cfg.embed_dim and embeddings is None:
        raise ValueError(f"the network has an embedding input (embed_dim={cfg.embed_dim}) but no embeddings were given")
    net.check_condition(n, labels, embeddings)
    return labels, embeddings


def train_denoiser(
    net,
    images: torch.Tensor,
    out_dir: str | os.PathLike,
    hp: dict | None = None,
    labels: torch.Tensor | None = None,
    embeddings: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    stop_at_step: int | None = None,
    desc: str = "diffusion",
):
    """Train ``net`` (a ``Denoiser``) with the EDM loss; resume from ``out_dir/checkpoints`` if present.

    Args:
        net: freshly initialised ``Denoiser`` (its init must be seeded by the caller).
        images: float32 (N, C, H, W) training data with std ≈ σ_data (pixels in [-1, 1] or
            normalised latents); kept on the CPU, batches move to the device.
        out_dir: where ``checkpoints/``, ``train_log.{json,csv}`` go.
        hp: training hyperparameters over ``TRAIN_DEFAULTS``.
        labels: (N, label_dim) multi-hot classes, needed iff the network has a class input.
        embeddings: (N, embed_dim) pseudo-conditioning embeddings, needed iff it has an embedding input.
        seed: seeds the loop's generator (data order, σ, noise, condition dropout).
        stop_at_step: stop (after checkpointing) once this step is reached — simulates a kill in tests.

    Returns:
        dict(net=raw weights, ema=EMA network, guide=EMA at ``guide_step`` or None, log=loss log,
        finished=bool, precision="fp32"/"bf16"/"fp16" as run) — networks unwrapped, on the
        accelerator's device, EMA ones in eval mode.
    """
    hp = check_hyperparameters(hp or {})
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    labels, embeddings = _check_data(net, images, labels, embeddings)
    images = images.float().cpu()
    labels = labels.float().cpu() if labels is not None else None
    embeddings = embeddings.float().cpu() if embeddings is not None else None
    sigma_data = float(net.config.sigma_data)

    precision = training_precision(hp["mixed_precision"], default_device())
    acc = get_accelerator({"fp32": "no"}.get(precision, precision))  # on a CPU, accelerate stays in fp32 ...
    cpu_bf16 = acc.device.type == "cpu" and precision == "bf16"     # ... and bf16 autocast is ours
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], betas=tuple(hp["adam_betas"]), weight_decay=hp["weight_decay"])
    ema, guide = make_ema(net), None
    log = {"step": [], "images": [], "lr": [], "loss": []}
    start = 0

    resumed = None
    if (ckpt_root / TRAINING_STATE_FILE).exists():
        resumed = load_training_state(ckpt_root / TRAINING_STATE_FILE, modules={"net": net, "ema": ema},
                                      generators={"loop": gen, "torch_global": torch.default_generator})
        if resumed.has("modules", "guide"):
            guide = make_ema(net)
            resumed.load_module("guide", guide)
        start, log = resumed.meta["step"], resumed.meta["log"]
    model, opt = acc.prepare(net, opt)
    if resumed is not None:  # into the prepared optimizer, whose parameters are on the device
        resumed.load_optimizer("adam", opt)
    raw = acc.unwrap_model(model)
    ema.to(acc.device)
    if guide is not None:
        guide.to(acc.device)
    model.train()

    world, rank, n = acc.num_processes, acc.process_index, images.shape[0]
    batch = hp["batch_size"]
    if batch % world:
        raise ValueError(f"train.batch_size={batch} must be divisible by the number of processes ({world})")
    end = hp["steps"] if stop_at_step is None else min(hp["steps"], stop_at_step)
    bar = tqdm(range(start, end), initial=start, total=hp["steps"], desc=desc, disable=not progress or not acc.is_main_process)
    for step in bar:
        # -- one global batch, drawn identically on every process; this process takes its slice
        idx = torch.randint(n, (batch,), generator=gen)
        sigma = sample_sigma(batch, hp["p_mean"], hp["p_std"], gen)              # ln σ ~ N(P_mean, P_std²)
        noise = torch.randn((batch, *images.shape[1:]), generator=gen)
        keep_label = (torch.rand(batch, generator=gen) >= hp["label_dropout"]).float()[:, None]
        keep_embed = (torch.rand(batch, generator=gen) >= hp["embed_dropout"]).float()[:, None]
        mine = slice(rank * batch // world, (rank + 1) * batch // world)
        y = images[idx[mine]].to(acc.device)
        lab = (labels[idx] * keep_label)[mine].to(acc.device) if labels is not None else None
        emb = None
        if embeddings is not None:
            emb = embeddings[idx]
            if hp["embed_noise"]:  # the sampling-time condition of DiADM (privacy.generation.noisy_conditions)
                emb = emb + hp["embed_noise"] * torch.randn(emb.shape, generator=gen)
                emb = emb / emb.norm(dim=1, keepdim=True) * math.sqrt(emb.shape[1])
            emb = (emb * keep_embed)[mine].to(acc.device)

        lr = learning_rate(step, hp)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast(acc.device, "bf16") if cpu_bf16 else acc.autocast():
            loss = edm_loss(model, y, sigma[mine].to(acc.device), noise[mine].to(acc.device), lab, emb, sigma_data).mean()
        value = float(acc.reduce(loss.detach(), reduction="mean"))
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"diffusion training loss became {value} at step {step} (lr={lr:.3g}); the last good checkpoint is in "
                f"{ckpt_root}. Lower diffusion.train.lr, set diffusion.train.grad_clip, or check the data for NaN/inf."
            )
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if hp["grad_clip"]:
            acc.clip_grad_norm_(model.parameters(), hp["grad_clip"])
        opt.step()

        seen = (step + 1) * batch
        update_ema(ema, raw, ema_beta(batch, seen, hp["ema_halflife_images"], hp["ema_rampup"]))
        if hp["guide_step"] is not None and step + 1 == hp["guide_step"]:
            guide = make_ema(ema)  # the early EMA snapshot: the autoguidance guide
        log["step"].append(step + 1)
        log["images"].append(seen)
        log["lr"].append(lr)
        log["loss"].append(value)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)

        if (step + 1) % hp["checkpoint_every"] == 0 or step + 1 == end:
            acc.wait_for_everyone()
            if acc.is_main_process:
                _save_training_state(ckpt_root, step + 1, raw, ema, guide, opt, gen, log)
                write_log(out_dir, log)
            acc.wait_for_everyone()
    bar.close()
    finished = (len(log["step"]) and log["step"][-1] == hp["steps"]) or start >= hp["steps"]
    return {"net": raw, "ema": ema, "guide": guide, "log": log, "finished": bool(finished), "precision": precision}
