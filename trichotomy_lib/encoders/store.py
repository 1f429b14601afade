"""Saving and loading encoders and resumable training checkpoints — safetensors + JSON only.

An encoder directory holds ``encoder.json`` (kind, hyperparameters, image size, dim) and, for
the self-supervised encoder, ``encoder.safetensors``. A backbone encoder records the path and
SHA-256 of its local weights file instead of copying it; loading checks the hash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_path, atomic_write_json
from .base import Encoder

ENCODER_JSON = "encoder.json"
ENCODER_WEIGHTS = "encoder.safetensors"


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Atomic safetensors write (contiguous CPU copies)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_encoder(encoder: Encoder, directory: str | os.PathLike) -> Path:
    """Write ``encoder.json`` (+ ``encoder.safetensors`` for the SSL encoder) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if encoder.info.get("kind") == "ssl":
        save_tensors(encoder.net.state_dict(), directory / ENCODER_WEIGHTS)
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
    """Resumable training state in one safetensors file: net, optimiser, RNGs, losses.

    Optimiser tensors go in as ``opt.<param index>.<name>``; its param groups and the loss
    history go in the metadata as JSON. Nothing is pickled.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, step: int, losses: list[float], net, opt, *generators: torch.Generator) -> None:
        tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
        state = opt.state_dict()
        for index, slots in state["state"].items():
            for name, value in slots.items():
                tensors[f"opt.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        for i, gen in enumerate(generators):
            tensors[f"rng.{i}"] = gen.get_state()
        meta = {"step": str(step), "losses": json.dumps(losses), "param_groups": json.dumps(state["param_groups"])}
        save_tensors(tensors, self.path, metadata=meta)

    def load(self, net, opt, *generators: torch.Generator) -> tuple[int, list[float]]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                opt_state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
        for i, gen in enumerate(generators):
            gen.set_state(tensors[f"rng.{i}"])
        return int(meta["step"]), json.loads(meta["losses"])

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()
