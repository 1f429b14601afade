"""Stage ``diffusion``: the EDM denoisers in their conditioning modes (DESIGN step 5).

Modes (``diffusion.models``):
* ``joint`` — ONE network with a class input and an embedding input, each dropped
  (zeroed) independently during training (``train.label_dropout``, ``train.embed_dropout``).
  It serves all three modes: unconditional (both dropped), class (labels only) and pseudo
  (embedding only), and its own unconditional mode is the classifier-free guide. The
  default and smoke profiles use it (one training run fits the CPU budget).
* ``uncond``, ``class``, ``pseudo`` — separate networks, as the paper trains them; the
  ``uncond`` one is the guide of the other two.

Artifacts, per model ``<mode>/``: ``ema/``, ``raw/`` and (if ``train.guide_step``) ``guide/``
(diffusers ``save_pretrained`` directories, safetensors), ``train_log.{json,csv}``;
``models.json`` (configs, seconds, final loss); ``latent_stats.json`` in latent mode.
Checkpoints live in the ``.partial`` directory while training, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, project_root, section
from ..device import default_device
from ..diffusion.latent import LatentCodec, load_vae
from ..diffusion.network import Denoiser
from ..diffusion.presets import network_preset, sampler_preset, train_preset
from ..diffusion.sampler import sample
from ..diffusion.train import check_hyperparameters, train_denoiser
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from .data import load_splits

DEFAULTS: dict = {
    "preset": "default",   # smoke / default / paper: network, training and sampling presets (diffusion/presets.py)
    "models": ["joint"],   # any of joint, uncond, class, pseudo (see module docstring)
    "network": {},         # overrides of the preset's network shape (Denoiser arguments)
    "train": {},           # overrides of the preset's training hyperparameters (diffusion/train.py TRAIN_DEFAULTS)
    "sampler": {},         # overrides of the preset's sampling settings (solver, steps, guidance, guide, ...)
    "vae_path": None,      # local diffusers AutoencoderKL directory → latent diffusion (None: pixel space)
}
MODES = ("joint", "uncond", "class", "pseudo")
# which inputs each mode's network has: (class labels, embedding)
_INPUTS = {"joint": (True, True), "uncond": (False, False), "class": (True, False), "pseudo": (False, True)}
SAMPLER_KEYS = ("solver", "steps", "guidance", "guide", "sigma_min", "sigma_max", "rho", "batch_size")


def diffusion_config(cfg: dict) -> dict:
    """The ``diffusion`` section over ``DEFAULTS``, checked (unknown keys, modes, preset)."""
    d = section(cfg, "diffusion", DEFAULTS)
    models = d["models"]
    if isinstance(models, str) or not models or any(m not in MODES for m in models) or len(set(models)) != len(models):
        raise ConfigError(f"diffusion.models must be a non-empty list of distinct modes from {MODES}, got {models!r}")
    if "joint" in models and len(models) > 1:
        raise ConfigError(f"diffusion.models: 'joint' serves every mode; do not combine it with {[m for m in models if m != 'joint']}")
    if any(m in models for m in ("class", "pseudo")) and "uncond" not in models and d["sampler"].get("guide", "uncond") == "uncond":
        pass  # without an uncond model, guidance w != 1 needs guide: early (checked when sampling)
    try:
        d["network"] = {**network_preset(d["preset"]), **d["network"]}
        d["train"] = check_hyperparameters({**train_preset(d["preset"]), **d["train"]})
        d["sampler"] = {**sampler_preset(d["preset"]), "guide": "uncond", "batch_size": 128, **d["sampler"]}
    except ValueError as err:
        raise ConfigError(f"diffusion: {err}") from None
    unknown = sorted(set(d["sampler"]) - set(SAMPLER_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) in diffusion.sampler: {unknown}; known: {list(SAMPLER_KEYS)}")
    if d["sampler"]["guide"] not in ("uncond", "early"):
        raise ConfigError(f"diffusion.sampler.guide must be 'uncond' or 'early', got {d['sampler']['guide']!r}")
    return d


def _vae_dir(vae_path) -> Path:
    path = Path(vae_path)
    return path if path.is_absolute() else project_root() / path


def _training_data(ctx: StageContext, d: dict):
    """(images or normalised latents, labels, embeddings or None, codec or None)."""
    train = load_splits(ctx.pipeline)["train"]
    x = train.tensor()
    labels = torch.from_numpy(train.labels.astype(np.float32))
    embeddings = None
    if any(_INPUTS[m][1] for m in d["models"]):
        from .encoder import load_embeddings

        emb = load_embeddings(ctx.pipeline, "train")
        if emb.ndim != 2 or emb.shape[0] != len(train):
            raise ValueError(f"encoder embeddings have shape {emb.shape}; expected ({len(train)}, dim), one row per training image")
        embeddings = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    codec = None
    if d["vae_path"]:
        codec = LatentCodec(load_vae(_vae_dir(d["vae_path"])).to(default_device()))
        raw = codec.encode_raw(x, progress=True)
        codec.fit(raw)
        codec.save(ctx.out / "latent_stats.json")
        x = codec.normalise(raw)
    return x, labels, embeddings, codec


@stage("diffusion", keys=("seed", "diffusion.preset", "diffusion.models", "diffusion.network", "diffusion.train",
                          "diffusion.vae_path"), deps=("data", "encoder"), version=2)  # 2: default preset 3000 steps
def diffusion_stage(ctx: StageContext) -> None:
    """Train every configured denoiser (EMA, optional early guide), resuming from checkpoints."""
    d = diffusion_config({"diffusion": {k.split(".", 1)[1]: v for k, v in ctx.params.items()
                                        if k.startswith("diffusion.") and v is not None}})
    seed = int(ctx.params["seed"])
    x, labels, embeddings, _ = _training_data(ctx, d)
    summary = {}
    for k, mode in enumerate(d["models"]):
        has_labels, has_embed = _INPUTS[mode]
        net_cfg = {**d["network"], "in_channels": int(x.shape[1]), "sample_size": int(x.shape[-1]),
                   "label_dim": int(labels.shape[1]) if has_labels else 0,
                   "embed_dim": int(embeddings.shape[1]) if has_embed else 0}
        out = ctx.out / mode
        start = time.perf_counter()
        if not (out / "done.json").exists():
            torch.manual_seed(seed * 1000 + 101 + k)  # network initialisation
            net = Denoiser(**net_cfg)
            result = train_denoiser(net, x, out, d["train"], labels if has_labels else None,
                                    embeddings if has_embed else None, seed=seed * 1000 + 202 + k, desc=f"diffusion [{mode}]")
            for which in ("ema", "net", "guide"):
                if result[which] is not None:
                    name = "raw" if which == "net" else which
                    tmp = out / f".{name}.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    result[which].save_pretrained(tmp, safe_serialization=True)
                    shutil.rmtree(out / name, ignore_errors=True)
                    os.replace(tmp, out / name)
            atomic_write_json(out / "done.json", {"mode": mode, "steps": d["train"]["steps"]})
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        log = json.loads((out / "train_log.json").read_text())
        summary[mode] = {"network": net_cfg, "train": d["train"], "seconds": round(time.perf_counter() - start, 1),
                         "final_loss": float(np.mean(log["loss"][-50:]))}
    atomic_write_json(ctx.out / "models.json", {"models": summary, "preset": d["preset"]})


# ---------------------------------------------------------------------------------- loaders
def _model_dir(pipe: Pipeline, mode: str | None) -> Path:
    root = pipe.get("diffusion")
    trained = json.loads((root / "models.json").read_text())["models"]
    if mode is None:
        mode = "joint" if "joint" in trained else next(iter(trained))
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode not in trained:
        if "joint" in trained:
            mode = "joint"  # the joint network serves every conditioning mode
        else:
            raise ValueError(f"no {mode!r} model trained; diffusion.models = {sorted(trained)}")
    return root / mode


def load_denoiser(pipe: Pipeline, mode: str | None = None, which: str = "ema", device=None) -> Denoiser:
    """The trained network serving ``mode`` (uncond/class/pseudo/joint; None: the first trained),
    ``which`` = "ema" (what is sampled), "raw" (last weights) or "guide" (early EMA for autoguidance);
    eval mode, on ``device`` (default: ``device.default_device()``)."""
    if which not in ("ema", "raw", "guide"):
        raise ValueError(f"which must be 'ema', 'raw' or 'guide', got {which!r}")
    path = _model_dir(pipe, mode) / which
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no {which!r} weights (for 'guide', set diffusion.train.guide_step)")
    net = Denoiser.from_pretrained(path, use_safetensors=True)
    return net.to(device or default_device()).eval()


def load_train_log(pipe: Pipeline, mode: str | None = None) -> dict:
    """``{"step", "images", "lr", "loss"}`` lists of the model serving ``mode``."""
    return json.loads((_model_dir(pipe, mode) / "train_log.json").read_text())


def load_codec(pipe: Pipeline) -> LatentCodec | None:
    """The latent codec (VAE + normalisation) in latent mode, else None."""
    d = diffusion_config(pipe.cfg)
    if not d["vae_path"]:
        return None
    vae = load_vae(_vae_dir(d["vae_path"])).to(default_device())
    return LatentCodec.load(vae, pipe.get("diffusion") / "latent_stats.json")


def sample_images(pipe: Pipeline, mode: str, seeds, labels=None, embedding=None, progress: bool = False, **overrides) -> torch.Tensor:
    """Images (len(seeds), 1, H, W) in [-1, 1] from the model serving ``mode``.

    Sampling settings are the profile's ``diffusion.sampler`` with ``overrides`` on top (solver,
    steps, guidance, guide ("uncond": the unconditional mode/model; "early": autoguidance with the
    early EMA), sigma_min, sigma_max, rho, batch_size). ``labels`` (N, 8) for mode "class",
    ``embedding`` (N, D) for "pseudo". Latents are decoded to pixels.
    """
    d = diffusion_config(pipe.cfg)
    s = {**d["sampler"], **overrides}
    unknown = sorted(set(s) - set(SAMPLER_KEYS))
    if unknown:
        raise ValueError(f"unknown sampler setting(s) {unknown}; known: {list(SAMPLER_KEYS)}")
    cond = {"class": {"labels": labels}, "pseudo": {"embedding": embedding}, "uncond": {},
            "joint": {"labels": labels, "embedding": embedding}}.get(mode)
    if cond is None:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "class" and labels is None or mode == "pseudo" and embedding is None:
        raise ValueError(f"mode {mode!r} needs {'labels' if mode == 'class' else 'embedding'}")
    net = load_denoiser(pipe, mode)
    guide_net = None
    if s["guidance"] != 1.0:
        if s["guide"] == "early":
            guide_net = load_denoiser(pipe, mode, which="guide")
        elif "joint" not in d["models"] and mode != "uncond":
            guide_net = load_denoiser(pipe, "uncond")  # the paper's guide: the separately trained uncond model
    x = sample(net, {k: v for k, v in cond.items() if v is not None}, seeds, steps=int(s["steps"]), guidance=float(s["guidance"]),
               guide_net=guide_net, solver=s["solver"], sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], rho=s["rho"],
               batch_size=int(s["batch_size"]), clamp=not d["vae_path"], progress=progress)
    if d["vae_path"]:
        x = load_codec(pipe).decode(x)
    return x
