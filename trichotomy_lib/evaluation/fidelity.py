"""Fidelity and diversity of a release (DESIGN step 8): Fréchet distance and the Image Retrieval
Score, in a stated feature space.

Feature space. The paper computes FID and IRS in the same SwAV space it pseudo-conditions on;
a generator conditioned on those very features is then measured by how well it reproduces
them — a circular yardstick that flatters DiADM. Here the features are the *penultimate
activations of a classifier trained on the real training split* (the input of its last linear
layer): a space that encodes the findings and the anatomy a radiograph classifier uses, with
no tie to the pseudo-conditioning encoder (a SimCLR network on PhantomCXR, SwAV at paper
scale). By default that classifier is trained with its *own* seed (``utility.features:
independent``), because the reference classifier itself scores label consistency in the
privacy filter, which selects the released samples — measuring the filter's output with the
network that chose it would be a second circularity.

* Fréchet distance (Heusel et al. 2017): Gaussians fitted to the features of the release and of
  the real training split, ``stats.frechet_distance``. Its value depends on the sample sizes
  (the bias of the covariance estimate grows as ~1/n), so every release is compared with a
  real reference *of the same size*: the larger of (release, real test split) is subsampled
  to the smaller one's n (``fidelity_row(equal_n=True)``), and the real test images' distance
  to the training split at that n is the floor a perfect generator would reach.
* IRS (Dombrowski et al. 2025, ``irs.py``): each synthetic feature retrieves its nearest
  training feature; distinct hits → ``IRS_α``; occupancy-model estimate ``IRS_∞`` with bounds;
  divided by the same estimate for real test queries at the same n (the *adjusted* IRS, ≈ 1 =
  as diverse as real data in this space; IRS also grows with n).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.imageset import ImageSet
from .classifier import Classifier
from .irs import adjusted_irs
from .stats import frechet_distance

__all__ = ["penultimate_features", "equal_size", "fidelity_row", "FEATURE_SPACE_NOTE"]

FEATURE_SPACE_NOTE = {
    "independent": "penultimate features of a classifier trained on the real train split with its own seed "
                   "(not the pseudo-conditioning encoder, not the filter's consistency classifier)",
    "reference": "penultimate features of the reference classifier (not the pseudo-conditioning encoder; "
                 "note: the filter used this network to select samples)",
}


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"penultimate_features: {type(net).__name__} has no nn.Linear head")
    return linears[-1]


@torch.inference_mode()
def penultimate_features(clf: Classifier, images: ImageSet, batch_size: int | None = None) -> np.ndarray:
    """(N, D) float32 input of the classifier's last linear layer for every image.

    SmallCNN: the globally average-pooled last conv block (D = width · 2^(depth−1));
    DenseNet-121: the pooled 1024-d feature. Deterministic (eval mode, no augmentation).
    images: an ImageSet with the (H, W) the classifier was trained on.
    """
    if not isinstance(images, ImageSet):
        raise TypeError(f"penultimate_features: expected an ImageSet, got {type(images).__name__}")
    captured: list[torch.Tensor] = []
    hook = _last_linear(clf.net).register_forward_pre_hook(lambda _m, args: captured.append(args[0].float().cpu()))
    try:
        clf.predict_logits(images, batch_size)
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float32)


def equal_size(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` (rows = samples) with the larger one subsampled, without replacement and in
    order, to the smaller one's size (``a`` is drawn first): FD and IRS then carry the same size bias."""
    m = min(len(a), len(b))
    a = a[np.sort(rng.choice(len(a), m, replace=False))] if len(a) > m else a
    b = b[np.sort(rng.choice(len(b), m, replace=False))] if len(b) > m else b
    return a, b


def fidelity_row(synth_feats, train_feats, test_feats, alpha_e: float = 0.05, equal_n: bool = True,
                 seed: int = 0) -> dict:
    """FD and IRS of one release in a feature space.

    synth_feats (n, D): the release; train_feats (N_train, D): the real training split (the
    generator's training data); test_feats (N_test, D): real held-out images (the reference).
    equal_n: subsample the larger of release and reference to the smaller one's size (default
        True), so the FD and IRS of the release and of the reference carry the same size bias;
        False uses both whole. seed: seeds the subsample.

    Returns ``fd`` (release vs train), ``fd_test`` (real test vs train: the floor at the same
    size), ``irs_alpha`` / ``irs_inf`` / ``irs_inf_lo`` / ``irs_inf_hi`` / ``at_cap``
    (synthetic queries), ``irs_real_inf`` (real test queries), ``irs_adjusted`` with
    ``irs_adjusted_lo`` / ``_hi``, ``n`` (release images used), ``n_reference`` (real test
    images used), ``n_release`` (the release's size), ``n_train``, ``k`` (distinct hits).
    """
    synth, train, test = (np.asarray(a, dtype=np.float64) for a in (synth_feats, train_feats, test_feats))
    for name, a in (("synth_feats", synth), ("train_feats", train), ("test_feats", test)):
        if a.ndim != 2 or len(a) < 2 or not np.isfinite(a).all():
            raise ValueError(f"fidelity_row: {name} must be a finite (N >= 2, D) array, got shape {a.shape}")
    if not synth.shape[1] == train.shape[1] == test.shape[1]:
        raise ValueError(f"fidelity_row: feature dimensions differ: {synth.shape[1]}, {train.shape[1]}, {test.shape[1]}")
    n_release = len(synth)
    if equal_n:
        synth, test = equal_size(synth, test, np.random.default_rng(seed))
    irs = adjusted_irs(synth, test, train, alpha_e=alpha_e)
    syn, real = irs["synthetic"], irs["real"]
    return dict(
        fd=frechet_distance(synth, train), fd_test=frechet_distance(test, train),
        n=syn["n"], n_reference=len(test), n_release=n_release, n_train=syn["n_train"], k=syn["k"],
        irs_alpha=syn["irs_alpha"], irs_inf=syn["irs_inf"], irs_inf_lo=syn["irs_inf_lo"],
        irs_inf_hi=syn["irs_inf_hi"], at_cap=syn["at_cap"], irs_real_inf=real["irs_inf"],
        irs_adjusted=irs["adjusted"], irs_adjusted_lo=irs["adjusted_lo"], irs_adjusted_hi=irs["adjusted_hi"],
    )
