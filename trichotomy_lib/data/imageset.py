"""The one in-memory container every stage passes around: images, labels, patients."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# The paper's 8 findings, in the paper's order (column order of every label matrix).
LABELS: tuple[str, ...] = (
    "No Finding",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)
N_LABELS = len(LABELS)

_FIELDS = ("images", "labels", "patient_ids", "names")


@dataclass(frozen=True)
class ImageSet:
    """A set of grayscale images with their 8 labels and patient ids.

    images:      (N, H, W) uint8, 0 = black.
    labels:      (N, 8) uint8 in {0, 1}, columns in ``LABELS`` order.
    patient_ids: (N,) str, the patient each image belongs to (ground truth identity).
    names:       (N,) str, a unique name per image (file relpath, or phantom scan id).
    """

    images: np.ndarray
    labels: np.ndarray
    patient_ids: np.ndarray
    names: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 3:
            raise ValueError(f"ImageSet.images must be (N, H, W), got shape {self.images.shape}")
        if self.labels.shape != (n, N_LABELS):
            raise ValueError(f"ImageSet.labels must be ({n}, {N_LABELS}), got {self.labels.shape}")
        for field in ("patient_ids", "names"):
            if getattr(self, field).shape != (n,):
                raise ValueError(f"ImageSet.{field} must be ({n},), got {getattr(self, field).shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def n_patients(self) -> int:
        return len(np.unique(self.patient_ids))

    def subset(self, index) -> "ImageSet":
        """Rows selected by an integer index array or a boolean mask."""
        index = np.asarray(index)
        return ImageSet(*(np.asarray(getattr(self, f))[index] for f in _FIELDS))

    @classmethod
    def concat(cls, parts: "list[ImageSet]") -> "ImageSet":
        """One ImageSet of ``parts`` in order (images of equal size)."""
        return cls(*(np.concatenate([np.asarray(getattr(p, f)) for p in parts]) for f in _FIELDS))

    def tensor(self, index=None) -> torch.Tensor:
        """Images as float32 (n, 1, H, W) in [-1, 1] — the range every model here uses."""
        return uint8_to_tensor(self.images if index is None else self.images[np.asarray(index)])

    def save(self, directory: str | os.PathLike) -> None:
        """One .npy per field (no pickle; images can be memory-mapped on load)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for field in _FIELDS:
            array = np.asarray(getattr(self, field))
            if array.dtype == object:
                array = array.astype(str)
            tmp = directory / f".{field}.tmp.npy"
            np.save(tmp, array, allow_pickle=False)
            os.replace(tmp, directory / f"{field}.npy")

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = False) -> "ImageSet":
        directory = Path(directory)
        arrays = {}
        for field in _FIELDS:
            path = directory / f"{field}.npy"
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; not an ImageSet directory")
            arrays[field] = np.load(path, allow_pickle=False, mmap_mode="r" if mmap and field == "images" else None)
        return cls(**arrays)


def uint8_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W) uint8 → float32 (n, 1, H, W) in [-1, 1]; inverse of ``images_to_uint8``."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1).div_(127.5).sub_(1.0)


def images_to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inverse of ``ImageSet.tensor``: (n, 1, H, W) or (n, H, W) in [-1, 1] → (n, H, W) uint8."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected 1 channel, got shape {x.shape}")
        x = x[:, 0]
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
