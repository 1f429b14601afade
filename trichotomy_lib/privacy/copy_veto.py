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

A space is a distance and a way to find a training image's nearest neighbour in it:

* ``L2Space``: Euclidean distance between features (pixels, an encoder's embedding);
* ``VerdictSpace``: a verifier's "same patient" verdict read as a distance,

      d(x, y) = −log P(same | x, y) = softplus(−logit(x, y)),                           (2)

  so that (1) in it vetoes a candidate the verifier matches with *some* training patient more
  surely than a share q of training images are matched with anyone else's. The defender's own
  veto compares a candidate with its source's patient only; a pseudo-conditioned sample can
  still take the identity of a *neighbour* of its source in the embedding (the condition is
  noised), and an attacker's verdict predicate then singles that neighbour out. (2) is the
  identity veto against every training patient. Its threshold, like (1)'s, uses the training
  split only.

Each space may have its own quantile (``quantile`` a dict).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluation.irs import nearest_neighbours

__all__ = ["leave_patient_out_distances", "pixel_space", "L2Space", "VerdictSpace", "CopyVeto"]


def pixel_space(max_size: int = 64) -> Callable:
    """Images (n, 1, H, W) → (n, D) pixels, area-downsampled to at most ``max_size``² (the same
    view of an image as the pixel-ball attacker's and the NN copy detector's)."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > max_size:
            x = torch.nn.functional.interpolate(x, size=(max_size, max_size), mode="area")
        return x.flatten(1)
    return fn


def _patients(patient_ids, n_rows: int) -> np.ndarray:
    """``patient_ids`` as strings, checked: one per row, at least two patients."""
    pid = np.asarray(patient_ids).astype(str)
    if len(pid) != n_rows:
        raise ValueError(f"{n_rows} feature rows for {len(pid)} patient ids")
    if len(np.unique(pid)) < 2:
        raise ValueError("leave-patient-out distances need at least two patients")
    return pid


def leave_patient_out_distances(features, patient_ids, k: int = 16) -> np.ndarray:
    """(N,) distance of each row to its nearest row of a *different* patient (L2).

    Searches the ``k`` nearest rows first (enough unless a patient has >= k images), then the
    remaining queries exhaustively."""
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features).float()
    x = x.reshape(len(x), -1)
    pid = _patients(patient_ids, len(x))
    k = min(k, len(x))
    dist, idx = nearest_neighbours(x, x, k=k)
    dist, idx = np.asarray(dist).reshape(len(x), k), np.asarray(idx).reshape(len(x), k)
    other = pid[idx] != pid[:, None]
    out = np.where(other.any(1), np.where(other, dist, np.inf).min(1), np.nan)
    for i in np.flatnonzero(~other.any(1)):  # all k neighbours were the same patient: search them all
        mask = pid != pid[i]
        out[i] = float(torch.cdist(x[i:i + 1], x[torch.from_numpy(mask)]).min())
    return out


class L2Space:
    """Euclidean distance between ``features_fn(images (n, 1, H, W) in [-1, 1]) → (n, D)``."""

    def __init__(self, features_fn: Callable):
        self.features = features_fn

    def nearest(self, query: torch.Tensor, train: torch.Tensor) -> np.ndarray:
        """(n,) distance of each query feature row to its nearest training row."""
        dist, _ = nearest_neighbours(query, train, k=1)
        return np.asarray(dist, dtype=np.float64).reshape(-1)

    def leave_patient_out(self, train: torch.Tensor, patient_ids) -> np.ndarray:
        return leave_patient_out_distances(train, patient_ids)


class VerdictSpace:
    """A verifier's verdict as the distance (2), −log P(same patient) (exact over all training images).

    ``verifier``: a ``reid_model.Verifier`` (``embed``, ``score_matrix``, ``max_score``)."""

    def __init__(self, verifier, batch_size: int = 256, chunk: int = 256):
        self.verifier, self.batch_size, self.chunk = verifier, batch_size, chunk

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.verifier.embed(images, batch_size=self.batch_size)

    def nearest(self, query: torch.Tensor, train: torch.Tensor) -> np.ndarray:
        logit, _ = self.verifier.max_score(query, train)
        return torch.nn.functional.softplus(-logit.double()).numpy()

    def leave_patient_out(self, train: torch.Tensor, patient_ids) -> np.ndarray:
        """(N,) −log P(same) of each training image's best match among other patients' images."""
        codes = torch.from_numpy(np.unique(_patients(patient_ids, len(train)), return_inverse=True)[1])
        best = []
        starts = range(0, len(train), self.chunk)   # N² head evaluations: a bar for large training sets
        for i in tqdm(starts, desc="identity veto (training verdicts)", leave=False, disable=len(train) < 20_000):
            logit = self.verifier.score_matrix(train[i:i + self.chunk], train)
            logit = logit.masked_fill(codes[i:i + self.chunk, None] == codes[None, :], -torch.inf)
            best.append(logit.max(1).values)
        return torch.nn.functional.softplus(-torch.cat(best).double()).numpy()


class CopyVeto:
    """Rule (1) over named spaces, thresholds fitted on the training split.

    Args:
        spaces: ``{name: space}``: an ``L2Space``, a ``VerdictSpace``, or a plain
            ``features_fn(images (n, 1, H, W) in [-1, 1]) → (n, D)`` (an ``L2Space``).
        train_images: (N, 1, H, W) training images in [-1, 1]; patient_ids: (N,).
        quantile: q in (0, 0.5), one for every space or ``{name: q}``: the share of training
            images whose leave-patient-out distance falls below the threshold (0.05: closer than
            95 % of real images are to anyone else).
    """

    def __init__(self, spaces: dict, train_images: torch.Tensor, patient_ids, quantile: float | dict = 0.05):
        if not spaces:
            raise ValueError("the copy veto needs at least one feature space")
        self.spaces = {}
        for name, s in spaces.items():
            if not (isinstance(s, (L2Space, VerdictSpace)) or callable(s)):
                raise TypeError(f"copy-veto space {name!r} must be an L2Space, a VerdictSpace or a features "
                                f"function, got {type(s).__name__}")
            self.spaces[name] = s if isinstance(s, (L2Space, VerdictSpace)) else L2Space(s)
        q = quantile if isinstance(quantile, dict) else {name: quantile for name in self.spaces}
        if set(q) != set(self.spaces):
            raise ValueError(f"copy-veto quantiles given for {sorted(q)}, spaces are {sorted(self.spaces)}")
        for name, value in q.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 0.5:
                raise ValueError(f"copy-veto quantile of space {name!r} must be in (0, 0.5), got {value}")
        self.quantile = {name: float(value) for name, value in q.items()}
        self.train = {name: torch.as_tensor(s.features(train_images)).float() for name, s in self.spaces.items()}
        self.leave_patient_out = {}  # {space: (N,) each training image's distance to another patient's}
        for name, feats in self.train.items():
            if not torch.isfinite(feats).all():
                raise ValueError(f"copy veto: the {name!r} features of the training images contain NaN/inf")
            self.leave_patient_out[name] = self.spaces[name].leave_patient_out(feats, patient_ids)
        self.thresholds = {name: float(np.quantile(d, self.quantile[name])) for name, d in self.leave_patient_out.items()}
        for name in self.spaces:
            if not self.thresholds[name] > 0:
                raise ValueError(f"copy veto: threshold 0 in space {name!r} (duplicate training images of "
                                 "different patients?)")

    def thresholds_at(self, quantile: float) -> dict[str, float]:
        """t_S of rule (1) in every space at another quantile q in (0, 0.5) (the same training distances)."""
        if not 0 < quantile < 0.5:
            raise ValueError(f"copy-veto quantile must be in (0, 0.5), got {quantile}")
        return {name: float(np.quantile(d, quantile)) for name, d in self.leave_patient_out.items()}

    def distances(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """{space: (n,) distance of each image to its nearest training image}."""
        return {name: s.nearest(torch.as_tensor(s.features(images)).float(), self.train[name])
                for name, s in self.spaces.items()}

    def ratio(self, images: torch.Tensor) -> np.ndarray:
        """``copy_ratio`` (n,): min over spaces of distance / threshold; < 1 is a veto."""
        d = self.distances(images)
        return np.min(np.stack([d[name] / self.thresholds[name] for name in self.spaces]), axis=0)
