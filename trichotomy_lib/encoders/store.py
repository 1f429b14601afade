"""Saving and loading encoders, and the resumable state of their training — safetensors + JSON only.

An encoder directory holds ``encoder.json`` (kind, hyperparameters, image size, dim) and, for
the self-supervised encoder, ``encoder.safetensors``. A backbone encoder records the path and
SHA-256 of its local weights file instead of copying it; loading checks the hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..checkpoint import load_training_state, remove_training_state, save_training_state, save_weights
from ..io import atomic_write_json
from .base import Encoder

ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.safetensors"


def save_encoder(encoder: Encoder, directory: str | os.PathLike) -> Path:
    """Write ``encoder.json`` (+ ``encoder.safetensors`` for the SSL encoder) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if encoder.info.get("kind") == "ssl":
        save_weights(directory / ENCODER_WEIGHTS, encoder.net.state_dict())
    atomic_write_json(directory / ENCODER_JSON, {**encoder.info, "dim": encoder.dim, "image_size": encoder.image_size})
    return directory


def load_encoder_dir(directory: str | os.PathLike, device=None) -> Encoder:
    """Rebuild the ``Encoder`` saved by ``save_encoder`` (errors name the missing file)."""
    directory = Path(directory)
    meta_path = directory / ENCODER_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: missing; not an encoder directory")
    info = json.loads(meta_path.read_text())
    kind = info.get("kind")
    if kind == "ssl":
        from .ssl import build_net

        weights = directory / ENCODER_WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"{weights}: encoder weights missing")
        net = build_net(info["hyperparameters"], info["image_size"])
        net.load_state_dict(load_file(str(weights)))
        return Encoder(net, info["dim"], info["image_size"], {k: v for k, v in info.items() if k not in ("dim", "image_size")}, device)
    if kind == "backbone":
        from .backbone import torchvision_encoder

        return torchvision_encoder(info["backbone"], info["weights"], expected_sha256=info.get("sha256"), device=device)
    raise ValueError(f"{meta_path}: unknown encoder kind {kind!r} (expected 'ssl' or 'backbone')")


class Checkpoint:
    """The resumable state of ``ssl.train_ssl`` at one path: net, optimiser, RNGs, step and losses.

    A thin handle on ``trichotomy_lib.checkpoint`` (one safetensors file, nothing pickled):
    ``save``/``load`` take the generators in a fixed order, stored as ``rng.0``, ``rng.1``, ...
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, losses: list[float], net, opt, *generators: torch.Generator) -> None:
        save_training_state(self.path, modules={"net": net}, optimizers={"opt": opt},
                            generators={f"rng.{i}": g for i, g in enumerate(generators)},
                            meta={"step": int(step), "losses": list(losses)})

    def load(self, net, opt, *generators: torch.Generator) -> tuple[int, list[float]]:
        """Restore ``net``, ``opt`` and ``generators`` in place; returns ``(step, losses)``."""
        state = load_training_state(self.path, modules={"net": net}, optimizers={"opt": opt},
                                    generators={f"rng.{i}": g for i, g in enumerate(generators)})
        return int(state.meta["step"]), list(state.meta["losses"])

    def remove(self) -> None:
        remove_training_state(self.path)
