"""The ``diffusion`` profile section: which denoisers, their shape, training and sampling.

Modes (``models``):
* ``joint`` — ONE network with a class input and an embedding input, each dropped (zeroed)
  independently during training (``train.label_dropout``, ``train.embed_dropout``). It serves
  all three modes: unconditional (both dropped), class (labels only) and pseudo (embedding
  only), and its own unconditional mode is the classifier-free guide. One training run fits
  a CPU budget.
* ``uncond``, ``class``, ``pseudo`` — separate networks, as the paper trains them; the
  ``uncond`` one is the guide of the other two.
"""

from __future__ import annotations

from ..config import ConfigError, section
from ..device import PRECISIONS
from .presets import network_preset, sampler_preset, train_preset
from .train import check_hyperparameters

DIFFUSION_DEFAULTS: dict = {
    "preset": "default",   # smoke / default / paper: network, training and sampling presets (diffusion/presets.py)
    "models": ["joint"],   # any of joint, uncond, class, pseudo (see the module docstring)
    "network": {},         # overrides of the preset's network shape (Denoiser arguments)
    "train": {},           # overrides of the preset's training hyperparameters (diffusion/train.py TRAIN_DEFAULTS)
    "sampler": {},         # overrides of the preset's sampling settings (solver, steps, guidance, guide, precision, ...)
    "vae_path": None,      # local diffusers AutoencoderKL directory → latent diffusion (None: pixel space)
}
MODES = ("joint", "uncond", "class", "pseudo")
# the inputs each mode's network has: (class labels, embedding)
MODE_INPUTS = {"joint": (True, True), "uncond": (False, False), "class": (True, False), "pseudo": (False, True)}
SAMPLER_KEYS = ("solver", "steps", "guidance", "guide", "sigma_min", "sigma_max", "rho", "batch_size", "precision")


def diffusion_config(cfg: dict) -> dict:
    """The ``diffusion`` section over ``DIFFUSION_DEFAULTS`` with the preset's network, training
    and sampler settings filled in; unknown keys, modes and presets raise naming the field."""
    d = section(cfg, "diffusion", DIFFUSION_DEFAULTS)
    models = d["models"]
    if isinstance(models, str) or not models or any(m not in MODES for m in models) or len(set(models)) != len(models):
        raise ConfigError(f"diffusion.models must be a non-empty list of distinct modes from {MODES}, got {models!r}")
    if "joint" in models and len(models) > 1:
        raise ConfigError(f"diffusion.models: 'joint' serves every mode; do not combine it with {[m for m in models if m != 'joint']}")
    try:
        d["network"] = {**network_preset(d["preset"]), **d["network"]}
        d["train"] = check_hyperparameters({**train_preset(d["preset"]), **d["train"]})
        d["sampler"] = {**sampler_preset(d["preset"]), "guide": "uncond", "batch_size": 128, "precision": "auto",
                        **d["sampler"]}
    except ValueError as err:
        raise ConfigError(f"diffusion: {err}") from None
    unknown = sorted(set(d["sampler"]) - set(SAMPLER_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) in diffusion.sampler: {unknown}; known: {list(SAMPLER_KEYS)}")
    if d["sampler"]["precision"] not in PRECISIONS:
        raise ConfigError(f"diffusion.sampler.precision must be one of {list(PRECISIONS)}, got {d['sampler']['precision']!r}")
    if d["sampler"]["guide"] not in ("uncond", "early"):
        raise ConfigError(f"diffusion.sampler.guide must be 'uncond' or 'early', got {d['sampler']['guide']!r}")
    return d
