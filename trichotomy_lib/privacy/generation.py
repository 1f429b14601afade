"""The ``generate`` profile section and the pieces of a release that need no pipeline.

One synthetic sample per real training image (the *source*), labelled with the source's
labels (DESIGN step 6). ``diadm_raw`` is the filter's first candidate of every source
(attempt 0, candidate 0, guidance g_0, the same per-sample seed): the filter run reuses those
images instead of drawing them again (``reuse_first_candidate``), and the defender judges them
like any other candidate.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import seeds
from ..config import ConfigError, section
from ..data.imageset import images_to_uint8, uint8_to_tensor
from ..device import PRECISIONS
from ..evaluation.classifier.consistency import label_consistency
from .sample_filter import check_filter_params, guidance_at

GENERATE_DEFAULTS: dict = {
    "n_sources": None,       # None: every training image is a source; int >= 1: a seeded random subset
    "solver": "dpm",         # "dpm" (DPM-Solver++(2M), N evaluations) or "heun" (EDM, 2N − 1)
    "steps": 10,             # sampler steps N >= 2 (paper: Heun 32)
    "guide": "uncond",       # "uncond": classifier-free (the unconditional mode/model); "early": autoguidance
    "class_guidance": None,  # guidance of edm_class (None: filter.guidance, the DiADM releases' first attempt)
    "batch_size": 256,       # samples per forward pass (does not change any image)
    "precision": "auto",     # of the denoiser's evaluations: "fp32", "bf16", "auto" (bf16 where the device has it
                             #   natively; device.native_bf16): 1.4-1.5x faster sampling on an AVX-512 BF16 CPU
    "condition_noise": 0.0,  # σ >= 0: DiADM is conditioned on sqrt(D)·(e + σn)/‖e + σn‖ (noisy_conditions); 0: on e
    "condition_labels": False,  # True: DiADM's condition also holds its source's labels (the joint network's label
                             #   input, beside the embedding) — labels every release carries anyway; False: the paper's
                             #   DiADM, the embedding alone
    "label_guidance": None,  # w_y >= 0: the labels' own guidance scale beside the DiADM guidance w where DiADM
                             #   is given labels (condition_labels; ignored without them) — InstructPix2Pix's two
                             #   scales (sampler.guided_denoiser), one more evaluation per step; None: one scale
    "filter": {},            # sample_filter.FILTER_DEFAULTS overrides (K, rounds, guidance schedule, veto, ...)
}

# The per-sample seed streams of the releases (``seeds.stream_id(seed, *tags)``).
EDM_CLASS_STREAM = ("generate", "edm_class")
DIADM_STREAM = ("generate", "diadm")


def generate_config(cfg: dict) -> dict:
    """The ``generate`` section over ``GENERATE_DEFAULTS``, with ``filter`` checked (unknown keys named)."""
    g = section(cfg, "generate", GENERATE_DEFAULTS)
    try:
        g["filter"] = check_filter_params(g["filter"])
    except ValueError as err:
        raise ConfigError(f"generate.filter: {err}") from None
    if g["solver"] not in ("dpm", "heun"):
        raise ConfigError(f"generate.solver must be 'dpm' or 'heun', got {g['solver']!r}")
    if g["guide"] not in ("uncond", "early"):
        raise ConfigError(f"generate.guide must be 'uncond' or 'early', got {g['guide']!r}")
    if not isinstance(g["steps"], int) or g["steps"] < 2:
        raise ConfigError(f"generate.steps must be an integer >= 2, got {g['steps']!r}")
    if g["precision"] not in PRECISIONS:
        raise ConfigError(f"generate.precision must be one of {list(PRECISIONS)}, got {g['precision']!r}")
    if g["n_sources"] is not None and (not isinstance(g["n_sources"], int) or g["n_sources"] < 1):
        raise ConfigError(f"generate.n_sources must be null or an integer >= 1, got {g['n_sources']!r}")
    if not isinstance(g["condition_noise"], (int, float)) or g["condition_noise"] < 0:
        raise ConfigError(f"generate.condition_noise must be a number >= 0, got {g['condition_noise']!r}")
    if not isinstance(g["condition_labels"], bool):
        raise ConfigError(f"generate.condition_labels must be true or false, got {g['condition_labels']!r}")
    lg = g["label_guidance"]
    if lg is not None and (isinstance(lg, bool) or not isinstance(lg, (int, float)) or lg < 0):
        raise ConfigError(f"generate.label_guidance must be null or a number >= 0, got {lg!r}")
    if g["class_guidance"] is None:
        g["class_guidance"] = g["filter"]["guidance"]
    return g


def source_indices(n_train: int, n_sources: int | None, seed: int, *tags) -> np.ndarray:
    """The sources: all training rows, or a seeded random subset of ``n_sources`` (sorted).

    ``tags`` name the seed stream (default ``("generate", "sources")``)."""
    if n_sources is None or n_sources >= n_train:
        return np.arange(n_train, dtype=np.int64)
    rng = seeds.rng(seed, *(tags or ("generate", "sources")))
    return np.sort(rng.choice(n_train, size=n_sources, replace=False)).astype(np.int64)


def noisy_conditions(embeddings, sigma: float, seed: int) -> np.ndarray:
    """The pseudo-conditions with noise: c_i = sqrt(D) · (e_i + σ n_i) / ‖e_i + σ n_i‖, n_i ~ N(0, I).

    Embeddings have norm sqrt(D), so each coordinate is ~unit scale and σ is a signal-to-noise
    knob: the coarse content of e (what findings look like) survives, the fine detail that
    singles a person out is blurred. One noise vector per source, from its own stream, so a
    source's condition is the same in every release and attempt. σ = 0 returns e unchanged.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if sigma == 0:
        return e
    noise = np.stack([seeds.rng(seed, "generate", "condition_noise", i).normal(size=e.shape[1]) for i in range(len(e))])
    c = e + np.float32(sigma) * noise.astype(np.float32)
    return (c / np.linalg.norm(c, axis=1, keepdims=True) * np.sqrt(e.shape[1])).astype(np.float32)


def reuse_first_candidate(sample_fn: Callable, raw_images: np.ndarray, raw_sources: np.ndarray, stream: int,
                          guidance: float) -> Callable:
    """Wrap ``sample_fn`` so that candidate (attempt 0, j 0) of a source — exactly the diadm_raw
    sample, same seed and guidance — is read from the raw release instead of sampled again.

    Every other request goes to ``sample_fn`` unchanged, so the wrapped function returns the
    same images as ``sample_fn`` itself (the raw release is uint8: the reused images are the
    quantised samples, which is what the filter judges anyway).
    """
    row = {int(s): i for i, s in enumerate(raw_sources)}
    first = {int(seeds.sample_seeds(stream, s, 0, 0)): i for s, i in row.items()}

    def fn(sources, sample_seeds, g):
        hit = np.array([g == guidance and int(s) in first for s in sample_seeds], dtype=bool)
        out = None
        if (~hit).any():
            drawn = torch.as_tensor(sample_fn(sources[~hit], sample_seeds[~hit], g), dtype=torch.float32)
            out = torch.empty((len(sample_seeds), *drawn.shape[1:]))
            out[torch.from_numpy(~hit)] = drawn
        if hit.any():
            cached = uint8_to_tensor(raw_images[[first[int(s)] for s in sample_seeds[hit]]])
            if out is None:
                out = torch.empty((len(sample_seeds), *cached.shape[1:]))
            out[torch.from_numpy(hit)] = cached
        return out

    return fn


def redraw_candidates(sources, attempt: int, filter_params: dict, stream: int, sample_fn: Callable,
                      defender_fn: Callable, classifier_fn: Callable, source_probs, audit: pd.DataFrame,
                      copy_fn: Callable | None = None):
    """All K candidates of ``attempt`` for a few ``sources``, redrawn from their seeds — exactly
    the images the filter judged — with the defender's and the label-consistency scores.

    Returns (images (n, K, H, W) uint8, table with one row per candidate: source_index,
    candidate, seed, guidance, defender_prob, flagged, bce, decision — "not drawn" for
    candidates the filter never needed).
    """
    k = filter_params["k"]
    sources = np.asarray(sources, dtype=np.int64)
    src = np.repeat(sources, k)
    j = np.tile(np.arange(k), len(sources))
    guidance = guidance_at(attempt, filter_params)
    sample_seeds = seeds.sample_seeds(stream, src, attempt, j)
    images = images_to_uint8(sample_fn(src, sample_seeds, guidance))
    x = uint8_to_tensor(images)
    prob = np.asarray(defender_fn(src, x))
    ratio = np.full(len(src), np.inf) if copy_fn is None else np.asarray(copy_fn(x), dtype=np.float64)
    bce = label_consistency(source_probs[src], classifier_fn(x))
    table = pd.DataFrame({"source_index": src, "candidate": j, "seed": sample_seeds, "guidance": guidance,
                          "defender_prob": prob, "copy_ratio": ratio,
                          "flagged": (prob >= filter_params["threshold"]) | (ratio < 1), "bce": bce})
    drawn = audit[audit["attempt"] == attempt][["seed", "decision"]]
    table = table.merge(drawn, on="seed", how="left")
    table["decision"] = table["decision"].fillna("not drawn")
    return images.reshape(len(sources), k, *images.shape[1:]), table
