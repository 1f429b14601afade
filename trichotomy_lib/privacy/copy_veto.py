"""The filter's second veto: a candidate closer to a training image than real patients ever are.

The defender verifier judges identity; an attacker need not. A pseudo-conditioned sample can
keep its source's pose, exposure and collimation — what a verifier is trained to ignore — and
a ball predicate in pixel space or in the conditioning encoder's space then singles the source
out. So the filter also vetoes a candidate c when, in any of those spaces S,

    min_y ‖f_S(c) − f_S(y)‖  <  t_S,   y over the training images,                      (1)

with t_S the ``quantile`` q of the *leave-patient-out* nearest-neighbour distances of the
training images themselves: for every training image x, its distance to the nearest training
image of another patient. A candidate closer to a training image than a fraction q of real
images are to anyone else's is treated as a near-copy. The threshold uses the training split
only — none of the audit's populations — so the audit that follows did not choose it.

``copy_ratio(c) = min_S d_S(c) / t_S``; (1) is ``copy_ratio < 1``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..evaluation.irs import nearest_neighbours

__all__ = ["leave_patient_out_distances", "pixel_space", "CopyVeto"]


def pixel_space(max_size: int = 64) -> Callable:
    """Images (n, 1, H, W) → (n, D) pixels, area-downsampled to at most ``max_size``² (the same
    view of an image as the pixel-ball attacker's and the NN copy detector's)."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > max_size:
            x = torch.nn.functional.interpolate(x, size=(max_size, max_size), mode="area")
        return x.flatten(1)
    return fn


def leave_patient_out_distances(features, patient_ids, k: int = 16) -> np.ndarray:
    """(N,) distance of each row to its nearest row of a *different* patient (L2).

    Searches the ``k`` nearest rows first (enough unless a patient has >= k images), then the
    remaining queries exhaustively."""
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).float()
    x = x.reshape(len(x), -1)
    pid = np.asarray(patient_ids).astype(str)
    if len(pid) != len(x):
        raise ValueError(f"{len(x)} feature rows for {len(pid)} patient ids")
    if len(np.unique(pid)) < 2:
        raise ValueError("leave-patient-out distances need at least two patients")
    k = min(k, len(x))
    dist, idx = nearest_neighbours(x, x, k=k)
    dist, idx = np.asarray(dist).reshape(len(x), k), np.asarray(idx).reshape(len(x), k)
    other = pid[idx] != pid[:, None]
    out = np.where(other.any(1), np.where(other, dist, np.inf).min(1), np.nan)
    for i in np.flatnonzero(~other.any(1)):  # all k neighbours were the same patient: search them all
        mask = pid != pid[i]
        out[i] = float(torch.cdist(x[i:i + 1], x[torch.from_numpy(mask)]).min())
    return out


class CopyVeto:
    """Rule (1) over named feature spaces, thresholds fitted on the training split.

    Args:
        spaces: ``{name: features_fn}``, each ``features_fn(images (n, 1, H, W) in [-1, 1]) → (n, D)``.
        train_images: (N, 1, H, W) training images in [-1, 1]; patient_ids: (N,).
        quantile: q in (0, 0.5): the share of training images whose leave-patient-out distance
            falls below the threshold (0.05: closer than 95 % of real images are to anyone else).
    """

    def __init__(self, spaces: dict[str, Callable], train_images: torch.Tensor, patient_ids, quantile: float = 0.05):
        if not 0 < quantile < 0.5:
            raise ValueError(f"copy-veto quantile must be in (0, 0.5), got {quantile}")
        if not spaces:
            raise ValueError("the copy veto needs at least one feature space")
        self.spaces, self.quantile = dict(spaces), float(quantile)
        self.train = {name: torch.as_tensor(fn(train_images)).float() for name, fn in self.spaces.items()}
        self.leave_patient_out = {}  # {space: (N,) each training image's distance to another patient's}
        for name, feats in self.train.items():
            if not torch.isfinite(feats).all():
                raise ValueError(f"copy veto: the {name!r} features of the training images contain NaN/inf")
            self.leave_patient_out[name] = leave_patient_out_distances(feats, patient_ids)
        self.thresholds = self.thresholds_at(quantile)
        for name in self.spaces:
            if not self.thresholds[name] > 0:
                raise ValueError(f"copy veto: threshold 0 in space {name!r} (duplicate training images of "
                                 "different patients?)")

    def thresholds_at(self, quantile: float) -> dict[str, float]:
        """t_S of rule (1) at another quantile q (the same training distances)."""
        return {name: float(np.quantile(d, quantile)) for name, d in self.leave_patient_out.items()}

    def distances(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """{space: (n,) distance of each image to its nearest training image}."""
        out = {}
        for name, fn in self.spaces.items():
            dist, _ = nearest_neighbours(torch.as_tensor(fn(images)).float(), self.train[name], k=1)
            out[name] = np.asarray(dist, dtype=np.float64).reshape(-1)
        return out

    def ratio(self, images: torch.Tensor) -> np.ndarray:
        """``copy_ratio`` (n,): min over spaces of distance / threshold; < 1 is a veto."""
        d = self.distances(images)
        return np.min(np.stack([d[name] / self.thresholds[name] for name in self.spaces]), axis=0)
