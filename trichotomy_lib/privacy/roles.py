"""Who trains on what: the defender and the auditor verifiers (DESIGN steps 2 and 7).

The **defender** is the data holder's own verifier, used by the privacy filter: it trains on
every training patient (the filter's job is to recognise exactly those patients), plus
``extra_patients`` fresh PhantomCXR patients of its own seed stream.

The **auditor** judges the release, so it must be a third party: it never sees a patient the
attack plays on. It trains on its own population — fresh PhantomCXR patients of its own seed
stream (``auditor_patients``; the stand-in for a public re-identification set, as Packhäuser
et al. trained on ChestX-ray14), or, for a data holder's file list, a part of the val + test
patients set aside for it (``controls.filelist_populations``) — and selects its epoch on a
held-out fifth of that population. It shares no patient with the training split, the control,
weight or negative-control populations, or the defender.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import seeds
from ..data.imageset import ImageSet
from .controls import control_population
from .reid_train import sample_pairs

ROLES = ("defender", "auditor")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"verifier role must be one of {ROLES}, got {role!r}")


def role_seed(seed: int, role: str) -> int:
    """The seed of one verifier (initialisation, pairs, shuffles, augmentation)."""
    check_role(role)
    return seeds.derive(seed, "reid", role)


def val_pairs_seed(seed: int) -> int:
    return seeds.derive(seed, "reid", "val_pairs")


def test_pairs_seed(seed: int) -> int:
    return seeds.derive(seed, "reid", "test_pairs")


def defender_train_set(train: ImageSet, seed: int, data_cfg: dict | None = None, extra_patients: int = 0) -> ImageSet:
    """The defender's training images: every training patient, plus ``extra_patients`` (>= 0)
    fresh PhantomCXR patients of its own seed stream (``data_cfg``: the profile's ``data``
    section, which must be ``source: phantom`` then)."""
    own = train
    if not extra_patients:
        return own
    if not (isinstance(extra_patients, int) and extra_patients > 0):
        raise ValueError(f"reid.extra_patients must be an integer >= 0, got {extra_patients!r}")
    if (data_cfg or {}).get("source", "phantom") != "phantom":
        raise ValueError("reid.extra_patients generates PhantomCXR patients; with data.source "
                         f"{data_cfg.get('source')!r} set it to 0 (or train on your own extra patients)")
    extra = control_population(data_cfg, extra_patients, seed, stream="reid-defender", prefix="reid-defender",
                               train_like=False)
    return ImageSet.concat([own, extra])


def veto_threshold(verifier, val: ImageSet, recall: float, pair_seed: int) -> float:
    """The defender's veto threshold t at which it flags ``recall`` of the same-patient pairs of
    the val split (patients the audit never plays on): P(same) >= t for that share of them.

    Chosen from how the defender scores genuine matches, not from any audit outcome."""
    pairs = sample_pairs(val.patient_ids, pair_seed, split="val")
    emb = verifier.embed(val)
    same = pairs.label.astype(bool)
    prob = verifier.probability(verifier.score_pairs(emb[torch.from_numpy(pairs.a[same])],
                                                     emb[torch.from_numpy(pairs.b[same])])).numpy()
    return float(np.clip(np.quantile(prob, 1 - recall), 1e-6, 1 - 1e-6))


def auditor_population(data_cfg: dict, n_patients: int, seed: int) -> ImageSet:
    """The auditor's own PhantomCXR patients: ``n_patients`` (>= 2) fresh ones, its own seed stream."""
    if not (isinstance(n_patients, int) and n_patients >= 2):
        raise ValueError(f"reid.auditor_patients must be an integer >= 2, got {n_patients!r}")
    return control_population(data_cfg, n_patients, seed, stream="reid-auditor", prefix="reid-auditor",
                              train_like=False, progress=True)


def auditor_split(pool: ImageSet, seed: int, val_fraction: float = 0.2) -> tuple[ImageSet, ImageSet]:
    """(train, val) of the auditor: its population split by patient, a ``val_fraction`` for
    choosing the epoch, so not even the epoch is chosen on patients the attack plays on."""
    pid = pool.patient_ids.astype(str)
    patients, counts = np.unique(pid, return_counts=True)
    multi = seeds.rng(seed, "reid", "auditor", "val").permutation(patients[counts >= 2])  # val needs same-patient pairs
    n_val = max(1, int(round(val_fraction * len(patients))))
    if len(multi) < 3 or len(patients) - n_val < 2:
        raise ValueError(f"the auditor population has {len(patients)} patients, {len(multi)} of them with two or more "
                         "images; it needs at least 3 such patients (train and validation pairs). Give the auditor "
                         "more patients (reid.auditor_patients; for a file list, more val + test patients)")
    val = np.isin(pid, multi[:min(n_val, len(multi) - 2)])
    return pool.subset(~val), pool.subset(val)
