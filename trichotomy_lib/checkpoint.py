"""Training-state checkpoints: everything needed to resume an interrupted training run.

One checkpoint is one ``.safetensors`` file. Every tensor of the saved state — module
weights, optimizer moments and step counters, random-generator states, tensors inside the
caller's ``meta`` — is a safetensors tensor; everything else (optimizer param groups, other
optimizer scalars, the caller's ``meta``) is JSON in the file's metadata, in which a tensor
appears as a reference to its entry. Nothing is pickled, and loading executes no code from
the file.

The JSON keeps what plain JSON would lose, so a state dict comes back equal to the one
saved: a tuple is written ``{"__tuple__": [...]}``, a dict with a non-string key (an
optimizer's ``state`` is keyed by parameter index) ``{"__items__": [[key, value], ...]}``, a
tensor ``{"__tensor__": "<entry name>"}``; floats, including inf and NaN, round-trip exactly.

The file is written to a temporary name, flushed to disk and renamed onto ``path``: a reader
sees the previous checkpoint or the new one, never a mix. The metadata carries a format tag
and a version; ``load_training_state`` refuses anything else with an error naming the file.

Usage::

    save_training_state(path, modules={"net": net, "best": best_state_dict},
                        optimizers={"adam": opt}, generators={"augment": gen}, meta={"epoch": 3})
    state = load_training_state(path, modules={"net": net}, optimizers={"adam": opt},
                                generators={"augment": gen})
    best_state, epoch = state.state_dict("best"), state.meta["epoch"]
    remove_training_state(path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .io import atomic_path

__all__ = ["FORMAT", "VERSION", "CheckpointError", "TrainingState", "save_training_state", "load_training_state",
           "remove_training_state", "save_weights"]

FORMAT = "trichotomy-training-state"
VERSION = 1

_TAGS = ("__tensor__", "__tuple__", "__items__")
_KINDS = ("modules", "optimizers", "generators")


class CheckpointError(ValueError):
    """A file is not a training-state checkpoint of this version, or does not hold what was asked for."""


# ---------------------------------------------------------------------------- encoding
class _Encoder:
    """Turns a nested state (dicts, lists, tuples, scalars, tensors) into JSON + a tensor table."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, obj, where: str):
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": self._add(obj, where)}
        if isinstance(obj, np.generic):
            obj = obj.item()
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{where}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{where}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            plain = all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _TAGS)
            if plain:
                return {k: self.encode(v, f"{where}/{k}") for k, v in obj.items()}
            return {"__items__": [[self.encode(k, f"{where}/key"), self.encode(v, f"{where}/{k}")]
                                  for k, v in obj.items()]}
        raise TypeError(f"cannot store {where} in a training-state checkpoint: {type(obj).__name__} "
                        "(allowed: tensors, dict, list, tuple, str, int, float, bool, None)")

    def _add(self, tensor: torch.Tensor, where: str) -> str:
        name, n = where, 1
        while name in self.tensors:  # two paths can spell the same name if a key contains "/"
            name, n = f"{where}#{n}", n + 1
        # A fresh contiguous CPU copy: safetensors refuses tensors that share memory (tied weights).
        self.tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
        return name


def _decode(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "__items__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _check_names(kind: str, items: Mapping | None) -> dict:
    items = dict(items or {})
    for name in items:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{kind} names must be non-empty strings without '/', got {name!r}")
    return items


# ---------------------------------------------------------------------------- saving
def save_weights(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> Path:
    """A final model's weights as one safetensors file (contiguous CPU copies), written atomically."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_training_state(path: str | os.PathLike, *, modules: Mapping | None = None, optimizers: Mapping | None = None,
                        generators: Mapping[str, torch.Generator] | None = None, meta: Mapping | None = None) -> Path:
    """Write a checkpoint to ``path`` (one ``.safetensors`` file) atomically.

    modules: ``{name: nn.Module or state dict}`` — e.g. the network and the best epoch's weights.
    optimizers: ``{name: optimizer}`` (anything with ``state_dict()``: torch optimizers, accelerate's
        wrapper); the whole state dict round-trips, param groups and step counters included.
    generators: ``{name: torch.Generator}``; ``torch.default_generator`` saves the global CPU RNG.
    meta: JSON-like training progress (epoch, loss history, a run fingerprint, ...); may hold tensors.
    Returns ``path``. On any error the file at ``path`` is left as it was.
    """
    path = Path(path)
    enc = _Encoder()
    doc: dict = {kind: {} for kind in _KINDS}
    for name, module in _check_names("module", modules).items():
        state = module.state_dict() if hasattr(module, "state_dict") else module
        if not isinstance(state, Mapping):
            raise TypeError(f"module {name!r}: expected an nn.Module or a state dict, got {type(module).__name__}")
        doc["modules"][name] = enc.encode(dict(state), f"modules/{name}")
    for name, opt in _check_names("optimizer", optimizers).items():
        doc["optimizers"][name] = enc.encode(opt.state_dict(), f"optimizers/{name}")
    for name, gen in _check_names("generator", generators).items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generator {name!r}: expected a torch.Generator, got {type(gen).__name__}")
        doc["generators"][name] = {"device": gen.device.type, "state": enc.encode(gen.get_state(), f"generators/{name}")}
    doc["meta"] = enc.encode(dict(meta or {}), "meta")
    header = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(doc, allow_nan=True)}
    with atomic_path(path) as tmp:
        save_file(enc.tensors, str(tmp), metadata=header)
        with open(tmp, "rb") as fh:  # on disk before the rename makes it the checkpoint
            os.fsync(fh.fileno())
    return path


# ---------------------------------------------------------------------------- loading
class TrainingState:
    """A checkpoint read from disk: ``meta`` plus what it holds, to be loaded into live objects.

    Everything is on the CPU; ``load_module``/``load_optimizer`` move it to the target's device.
    """

    def __init__(self, path: Path, doc: dict, tensors: dict[str, torch.Tensor]):
        self.path = path
        self._doc = doc
        self._tensors = tensors
        self.meta: dict = _decode(doc["meta"], tensors)

    def names(self, kind: str) -> list[str]:
        """The names stored under ``kind``: "modules", "optimizers" or "generators"."""
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        return list(self._doc[kind])

    def has(self, kind: str, name: str) -> bool:
        return name in self.names(kind)

    def _entry(self, kind: str, name: str):
        if name not in self._doc[kind]:
            raise CheckpointError(f"{self.path}: no {kind[:-1]} named {name!r} in this checkpoint "
                                  f"(it holds {kind}: {self.names(kind)})")
        return _decode(self._doc[kind][name], self._tensors)

    def state_dict(self, name: str, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The state dict saved as module ``name`` (tensors on ``device``, default CPU)."""
        state = self._entry("modules", name)
        return state if device is None else {k: v.to(device) if torch.is_tensor(v) else v for k, v in state.items()}

    def load_module(self, name: str, module: torch.nn.Module) -> None:
        """``module.load_state_dict`` (strict) with the state saved as ``name``."""
        if not hasattr(module, "load_state_dict"):
            raise TypeError(f"module {name!r}: expected an nn.Module to load into, got {type(module).__name__} "
                            "(a saved state dict is returned by TrainingState.state_dict(name))")
        try:
            module.load_state_dict(self._entry("modules", name), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{self.path}: module {name!r} does not fit the network: {err}") from None

    def optimizer_state(self, name: str) -> dict:
        return self._entry("optimizers", name)

    def load_optimizer(self, name: str, optimizer) -> None:
        """``optimizer.load_state_dict`` with the state saved as ``name`` (moved to the parameters' device)."""
        try:
            optimizer.load_state_dict(self.optimizer_state(name))
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{self.path}: optimizer {name!r} does not fit the parameters: {err}") from None

    def load_generator(self, name: str, generator: torch.Generator) -> None:
        """Restore ``generator`` to the state saved as ``name`` (same device type required)."""
        entry = self._entry("generators", name)
        if entry["device"] != generator.device.type:
            raise CheckpointError(f"{self.path}: generator {name!r} was saved from a {entry['device']} generator, "
                                  f"cannot restore a {generator.device.type} one")
        generator.set_state(entry["state"])


def _not_a_checkpoint(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a trichotomy training-state checkpoint ({why}); "
                           "delete it to start the training over")


def load_training_state(path: str | os.PathLike, *, modules: Mapping[str, torch.nn.Module] | None = None,
                        optimizers: Mapping | None = None,
                        generators: Mapping[str, torch.Generator] | None = None) -> TrainingState:
    """Read the checkpoint at ``path`` and restore the given objects from it, by name.

    modules: ``{name: nn.Module}`` filled strictly; optimizers: ``{name: optimizer}``;
    generators: ``{name: torch.Generator}``. Each name must be in the checkpoint. Anything
    else the checkpoint holds (e.g. a best-epoch state dict, a module created only when present)
    stays available on the returned ``TrainingState``, together with its ``meta``.
    Raises FileNotFoundError if ``path`` does not exist, CheckpointError if it is not a
    checkpoint of this format and version or lacks a requested name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training-state checkpoint there")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise _not_a_checkpoint(path, f"format tag {header.get('format')!r}, expected {FORMAT!r}")
            if header.get("version") != str(VERSION):
                raise CheckpointError(f"{path}: training-state checkpoint version {header.get('version')!r}, this code "
                                      f"reads version {VERSION}; delete it to start the training over")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise _not_a_checkpoint(path, f"not a safetensors file: {err}") from None
    try:
        doc = json.loads(header["state"])
        if not isinstance(doc, dict) or any(not isinstance(doc.get(k), dict) for k in _KINDS) or "meta" not in doc:
            raise ValueError("missing sections")
    except (KeyError, ValueError) as err:
        raise _not_a_checkpoint(path, f"unreadable state metadata: {err}") from None
    state = TrainingState(path, doc, tensors)
    for name, module in _check_names("module", modules).items():
        state.load_module(name, module)
    for name, opt in _check_names("optimizer", optimizers).items():
        state.load_optimizer(name, opt)
    for name, gen in _check_names("generator", generators).items():
        state.load_generator(name, gen)
    return state


def remove_training_state(path: str | os.PathLike) -> bool:
    """Delete the checkpoint at ``path`` and temporary files a killed save left beside it.

    Returns whether a checkpoint was there.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # atomic_path's temporary names
        stale.unlink(missing_ok=True)
    existed = path.is_file()
    path.unlink(missing_ok=True)
    return existed
