"""The trained reference classifier: network + hyperparameters + training history, predictions, files.

A saved classifier is a directory with ``classifier.safetensors`` (the weights) and
``classifier.json`` (format tag, hyperparameters, history, best epoch, training info);
loading rebuilds the network from the JSON and fills it from safetensors — nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ...data.imageset import ImageSet
from ...device import default_device
from ...checkpoint import save_weights
from ...io import atomic_write_json
from .nets import build_net

_FORMAT = "trichotomy-classifier"
_WEIGHTS_FILE, _META_FILE = "classifier.safetensors", "classifier.json"


@dataclass
class Classifier:
    """A trained classifier: network, its hyperparameters and how training went.

    hparams: ``arch``, ``width``, ``depth``, ``image_shape`` (H, W), ``labels``, ``eval_batch_size``.
    history: one dict per epoch: ``epoch``, ``train_loss``, ``val_loss`` (mean BCE per label).
    best_epoch: the epoch (0-based) whose weights these are — the lowest ``val_loss``.
    """

    net: nn.Module
    hparams: dict
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    info: dict = field(default_factory=dict)  # seed, training config, set sizes (recorded, not used)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.hparams["image_shape"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Classifier":
        self.net.to(device)
        return self

    # -- predictions ---------------------------------------------------------------------
    def _batches(self, images, batch_size: int):
        """Yield float (b, 1, H, W) batches in [-1, 1] after checking ``images`` fits the model."""
        h, w = self.image_shape
        if isinstance(images, ImageSet):
            if len(images) == 0:
                raise ValueError("predict_proba: the ImageSet is empty")
            if images.images.shape[1:] != (h, w):
                raise ValueError(f"predict_proba: images are {images.images.shape[1:]}, the classifier was trained on {(h, w)}")
            for start in range(0, len(images), batch_size):
                yield images.tensor(np.arange(start, min(start + batch_size, len(images))))
            return
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"predict_proba: expected a torch.Tensor (n, 1, H, W) in [-1, 1] or an ImageSet, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"predict_proba: images must be (n, 1, {h}, {w}) grayscale, got shape {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (h, w):
            raise ValueError(f"predict_proba: images are {tuple(images.shape[2:])}, the classifier was trained on {(h, w)}")
        if len(images) == 0:
            raise ValueError("predict_proba: no images (n = 0)")
        if not images.is_floating_point():
            raise ValueError(f"predict_proba: images must be float in [-1, 1] (ImageSet.tensor), got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.5 or hi > 1.5:
            raise ValueError(f"predict_proba: images must lie in [-1, 1] (ImageSet.tensor); got values in [{lo:.3g}, {hi:.3g}]")
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor | ImageSet, batch_size: int | None = None) -> np.ndarray:
        """(N, 8) float32 logits, in ``LABELS`` order. See ``predict_proba``."""
        batch_size = int(batch_size or self.hparams["eval_batch_size"])
        self.net.eval()
        device = self.device
        out = [self.net(x.to(device, torch.float32)).float().cpu() for x in self._batches(images, batch_size)]
        return torch.cat(out).numpy()

    def predict_proba(self, images: torch.Tensor | ImageSet, batch_size: int | None = None) -> np.ndarray:
        """(N, 8) float32 sigmoid outputs, in ``LABELS`` order.

        images: a float tensor (N, 1, H, W) in [-1, 1] (``ImageSet.tensor()``) or an ImageSet
        (converted batch by batch, so memory-mapped sets stay on disk), with the (H, W) the
        classifier was trained on. batch_size: default ``hparams["eval_batch_size"]``.
        """
        logits = self.predict_logits(images, batch_size)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()

    # -- files ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """``classifier.safetensors`` (weights) + ``classifier.json`` (everything else)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(directory / _WEIGHTS_FILE, self.net.state_dict())
        meta = {"format": _FORMAT, "version": 1, "hparams": self.hparams, "history": self.history,
                "best_epoch": self.best_epoch, "info": self.info}
        atomic_write_json(directory / _META_FILE, meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> "Classifier":
        """Inverse of ``save`` (safetensors + JSON; nothing is unpickled). Device: default_device()."""
        directory = Path(directory)
        meta_path, weights_path = directory / _META_FILE, directory / _WEIGHTS_FILE
        for path in (meta_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; not a saved classifier directory")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {_FORMAT!r}")
        net = build_net(meta["hparams"])  # no ImageNet file needed: every weight is in the file
        net.load_state_dict(load_file(str(weights_path)), strict=True)
        clf = cls(net, meta["hparams"], meta["history"], meta["best_epoch"], meta.get("info", {}))
        return clf.to(device or default_device())
