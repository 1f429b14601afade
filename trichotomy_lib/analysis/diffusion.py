"""Notebook 04's tables: the trained denoisers, samples of each mode, and how good they are.

Every sample here is drawn from a named per-sample seed stream (``seeds``): the notebook's
grids and numbers are reproducible and independent of the releases' streams.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import seeds
from ..data.imageset import LABELS
from ..diffusion.config import MODES, SAMPLER_KEYS
from ..diffusion.sampler import sample
from ..evaluation.stats import auroc_table
from ..pipeline import Pipeline
from ..stages.classifier import load_classifier
from ..stages.data import load_splits
from ..stages.diffusion import load_codec, load_denoiser, load_guide, trained_models
from ..stages.encoder import load_embeddings
from .utility import sample_fd

__all__ = ["notebook_seeds", "sample_images", "diffusion_models", "diffusion_class_auroc", "diffusion_fd",
           "pseudo_resemblance"]


def notebook_seeds(pipe: Pipeline, tag: str, n: int) -> np.ndarray:
    """``n`` per-sample seeds of the notebook stream ``tag`` (one stream per grid or check)."""
    return seeds.sample_seeds(seeds.stream_id(int(pipe.cfg["seed"]), "notebook", "diffusion", tag), np.arange(n))


def sample_images(pipe: Pipeline, mode: str, sample_seeds, labels=None, embedding=None, progress: bool = False,
                  **overrides) -> torch.Tensor:
    """Images (len(sample_seeds), 1, H, W) in [-1, 1] from the model serving ``mode``.

    Sampling settings are the profile's ``diffusion.sampler`` with ``overrides`` on top (solver,
    steps, guidance, guide ("uncond": the unconditional mode/model; "early": autoguidance with
    the early EMA), sigma_min, sigma_max, rho, batch_size, precision). ``labels`` (N, 8) for mode "class",
    ``embedding`` (N, D) for "pseudo". Latents are decoded to pixels.
    """
    s = {**pipe.cfg["diffusion"]["sampler"], **overrides}
    unknown = sorted(set(s) - set(SAMPLER_KEYS))
    if unknown:
        raise ValueError(f"unknown sampler setting(s) {unknown}; known: {list(SAMPLER_KEYS)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cond = {"class": {"labels": labels}, "pseudo": {"embedding": embedding}, "uncond": {},
            "joint": {"labels": labels, "embedding": embedding}}[mode]
    if (mode == "class" and labels is None) or (mode == "pseudo" and embedding is None):
        raise ValueError(f"mode {mode!r} needs {'labels' if mode == 'class' else 'embedding'}")
    codec = load_codec(pipe)
    guide_net = load_guide(pipe, mode, s["guide"]) if s["guidance"] != 1.0 else None
    x = sample(load_denoiser(pipe, mode), {k: v for k, v in cond.items() if v is not None}, sample_seeds,
               steps=int(s["steps"]), guidance=float(s["guidance"]), guide_net=guide_net, solver=s["solver"],
               sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], rho=s["rho"], batch_size=int(s["batch_size"]),
               clamp=codec is None, progress=progress, precision=s["precision"])
    return codec.decode(x) if codec is not None else x


def diffusion_models(pipe: Pipeline) -> pd.DataFrame:
    """One row per trained denoiser: parameters, shape, training budget, final loss."""
    rows = {}
    for mode, info in trained_models(pipe)["models"].items():
        net = load_denoiser(pipe, mode)
        rows[mode] = {"params (M)": sum(p.numel() for p in net.parameters()) / 1e6,
                      "channels": str(tuple(info["network"]["channels"])), "patch": info["network"]["patch_size"],
                      "steps": info["train"]["steps"], "batch": info["train"]["batch_size"],
                      "final loss": info["final_loss"], "train s": pipe.seconds("diffusion")}
    table = pd.DataFrame(rows).T
    table.index.name = "model"
    return table


def diffusion_class_auroc(pipe: Pipeline, per_finding: int, guidances=(1.0, 2.0)) -> pd.DataFrame:
    """Does each class-conditional sample show its finding? ``per_finding`` samples per one-hot
    label at each guidance, scored by the reference classifier: per-finding AUROC (columns: w)."""
    cond = np.repeat(np.eye(len(LABELS), dtype=np.float32), per_finding, axis=0)
    reference = load_classifier(pipe)
    out = {}
    for w in guidances:
        x = sample_images(pipe, "class", notebook_seeds(pipe, "class_auroc", len(cond)), labels=cond, guidance=w)
        out[f"w = {w:g}"] = auroc_table(cond, reference.predict_proba(x), LABELS, n_boot=0)["auroc"]
    return pd.DataFrame(out)


def diffusion_fd(pipe: Pipeline, n: int) -> pd.DataFrame:
    """Fréchet distance to the real training split of ``n`` samples of each mode (the same
    seeds; class and pseudo conditioned on the labels / embeddings of ``n`` random training
    images), in the fidelity feature space notebook 07 uses, beside the real test split's."""
    train = load_splits(pipe)["train"]
    pick = seeds.rng(int(pipe.cfg["seed"]), "notebook", "diffusion", "fd_sources").choice(len(train), n, replace=len(train) < n)
    fd_seeds = notebook_seeds(pipe, "fd", n)
    samples = {"uncond": sample_images(pipe, "uncond", fd_seeds),
               "class (labels of real images)": sample_images(pipe, "class", fd_seeds,
                                                              labels=train.labels[pick].astype(np.float32)),
               "pseudo (embeddings of real images)": sample_images(pipe, "pseudo", fd_seeds,
                                                                   embedding=load_embeddings(pipe, "train")[pick])}
    table = pd.DataFrame({mode: sample_fd(pipe, x) for mode, x in samples.items()}).T
    table.index.name = "mode"
    return table


def pseudo_resemblance(samples: torch.Tensor, sources: torch.Tensor) -> float:
    """Mean over samples of (pixel distance to its own source) / (mean distance to the other
    sources): < 1 when a pseudo-conditional sample resembles the image it was conditioned on.

    ``samples``: (n_src · per_src, 1, H, W), grouped by source; ``sources``: (n_src, 1, H, W)."""
    n_src = len(sources)
    if n_src < 2 or len(samples) % n_src:
        raise ValueError(f"need >= 2 sources and a whole number of samples per source, got {len(samples)} for {n_src}")
    per_src = len(samples) // n_src
    d = torch.cdist(samples.flatten(1).double(), sources.flatten(1).double())
    own = d[torch.arange(len(d)), torch.arange(len(d)) // per_src]
    others = (d.sum(1) - own) / (n_src - 1)
    return float((own / others).mean())
