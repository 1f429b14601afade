"""Stage ``diffusion``: the EDM denoisers in their conditioning modes (DESIGN step 5).

Modes and settings: ``diffusion.config``. Artifacts, per model ``<mode>/``: ``ema/``, ``raw/``
and (if ``train.guide_step``) ``guide/`` (diffusers ``save_pretrained`` directories,
safetensors), ``train_log.{json,csv}``; ``models.json`` (configs, seconds, final loss);
``latent_stats.json`` in latent mode. Checkpoints live in the ``.partial`` directory while
training, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .. import seeds
from ..config import project_root, register_section
from ..device import default_device
from ..diffusion.config import MODE_INPUTS, MODES, diffusion_config
from ..diffusion.latent import LatentCodec, load_vae
from ..diffusion.network import Denoiser
from ..diffusion.train import train_denoiser
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from .data import load_splits
from .encoder import load_embeddings

register_section("diffusion")(diffusion_config)


def _vae_dir(vae_path) -> Path:
    path = Path(vae_path)
    return path if path.is_absolute() else project_root() / path


def _training_data(ctx: StageContext, d: dict):
    """(images or normalised latents, labels, embeddings or None)."""
    train = load_splits(ctx.pipeline)["train"]
    x = train.tensor()
    labels = torch.from_numpy(train.labels.astype(np.float32))
    embeddings = None
    if any(MODE_INPUTS[m][1] for m in d["models"]):
        emb = load_embeddings(ctx.pipeline, "train")
        if emb.ndim != 2 or emb.shape[0] != len(train):
            raise ValueError(f"encoder embeddings have shape {emb.shape}; expected ({len(train)}, dim), one row per training image")
        embeddings = torch.from_numpy(np.asarray(emb, dtype=np.float32))
    if d["vae_path"]:
        codec = LatentCodec(load_vae(_vae_dir(d["vae_path"])).to(default_device()))
        raw = codec.encode_raw(x, progress=True)
        codec.fit(raw)
        codec.save(ctx.out / "latent_stats.json")
        x = codec.normalise(raw)
    return x, labels, embeddings


def _save_pretrained(net, directory: Path) -> None:
    """diffusers ``save_pretrained`` into a temporary directory, renamed into place."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


@stage("diffusion", keys=("seed", "diffusion.preset", "diffusion.models", "diffusion.network", "diffusion.train",
                          "diffusion.vae_path"), deps=("data", "encoder"), version=3)
def diffusion_stage(ctx: StageContext) -> None:
    """Train every configured denoiser (EMA, optional early guide), resuming from checkpoints."""
    d = {k: ctx.config[f"diffusion.{k}"] for k in ("models", "network", "train", "vae_path", "preset")}
    seed = int(ctx.config["seed"])
    x, labels, embeddings = _training_data(ctx, d)
    summary = {}
    for mode in d["models"]:
        has_labels, has_embed = MODE_INPUTS[mode]
        net_cfg = {**d["network"], "in_channels": int(x.shape[1]), "sample_size": int(x.shape[-1]),
                   "label_dim": int(labels.shape[1]) if has_labels else 0,
                   "embed_dim": int(embeddings.shape[1]) if has_embed else 0}
        out = ctx.out / mode
        start = time.perf_counter()
        if not (out / "done.json").exists():
            torch.manual_seed(seeds.derive(seed, "diffusion", mode, "init"))  # network initialisation
            net = Denoiser(**net_cfg)
            result = train_denoiser(net, x, out, d["train"], labels if has_labels else None,
                                    embeddings if has_embed else None, seed=seeds.derive(seed, "diffusion", mode, "train"),
                                    desc=f"diffusion [{mode}]")
            for which, name in (("ema", "ema"), ("net", "raw"), ("guide", "guide")):
                if result[which] is not None:
                    _save_pretrained(result[which], out / name)
            atomic_write_json(out / "done.json", {"mode": mode, "steps": d["train"]["steps"],
                                                  "precision": result["precision"]})
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        log = json.loads((out / "train_log.json").read_text())
        done = json.loads((out / "done.json").read_text())
        summary[mode] = {"network": net_cfg, "train": d["train"], "precision": done.get("precision"),
                         "seconds": round(time.perf_counter() - start, 1),
                         "final_loss": float(np.mean(log["loss"][-50:]))}
    atomic_write_json(ctx.out / "models.json", {"models": summary, "preset": d["preset"], "vae_path": d["vae_path"]})


# ---------------------------------------------------------------------------------- loaders
def trained_models(pipe: Pipeline) -> dict:
    """``models.json``: {"models": {mode: {network, train, seconds, final_loss}}, "preset", "vae_path"}."""
    return json.loads((pipe.get("diffusion") / "models.json").read_text())


def _model_dir(pipe: Pipeline, mode: str | None) -> Path:
    trained = trained_models(pipe)["models"]
    if mode is None:
        mode = "joint" if "joint" in trained else next(iter(trained))
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode not in trained:
        if "joint" in trained:
            mode = "joint"  # the joint network serves every conditioning mode
        else:
            raise ValueError(f"no {mode!r} model trained; diffusion.models = {sorted(trained)}")
    return pipe.get("diffusion") / mode


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


def load_guide(pipe: Pipeline, mode: str, guide: str) -> Denoiser | None:
    """The guide of ``mode``'s network: None for classifier-free guidance with the joint network's
    unconditional mode, the separate ``uncond`` model, or (``guide="early"``) the early EMA
    checkpoint of the same network (autoguidance)."""
    if guide == "early":
        return load_denoiser(pipe, mode, which="guide")
    if guide != "uncond":
        raise ValueError(f"guide must be 'uncond' or 'early', got {guide!r}")
    if "joint" in trained_models(pipe)["models"] or mode == "uncond":
        return None
    return load_denoiser(pipe, "uncond")


def load_train_log(pipe: Pipeline, mode: str | None = None) -> dict:
    """``{"step", "images", "lr", "loss"}`` lists of the model serving ``mode``."""
    return json.loads((_model_dir(pipe, mode) / "train_log.json").read_text())


def load_codec(pipe: Pipeline) -> LatentCodec | None:
    """The latent codec (VAE + normalisation) in latent mode, else None."""
    vae_path = trained_models(pipe).get("vae_path")
    if not vae_path:
        return None
    vae = load_vae(_vae_dir(vae_path)).to(default_device())
    return LatentCodec.load(vae, pipe.get("diffusion") / "latent_stats.json")
