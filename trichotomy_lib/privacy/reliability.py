"""The filter's own reliability (Koeken et al. 2025): does the veto catch what it must, spare
what it should, and give the same answer when its verifier is retrained?

Per-sample privacy filters for medical diffusion models have been found sensitive only to real
images, blind to the near-duplicates a model produces, quick to flag unseen patients and
inconsistent across seeds. So the veto (defender verdict against every scan of the source's
patient, plus the near-copy rule and the identity rule against every training patient) is put to three tests, with planted candidates whose truth is
known:

* **sensitivity** on near-duplicates of a source: the source image itself, a noised copy, a
  shifted copy, and another real scan of the source's patient — each must be vetoed;
* **specificity** on unseen patients: real images of patients in no split, offered as
  candidates for random sources — each should pass;
* **agreement** of the verdicts across defenders trained with different seeds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import seeds
from ..data.imageset import ImageSet
from .leaks import noised, random_sources, shifted

__all__ = ["planted_candidates", "veto_flags", "veto_reliability"]


def planted_candidates(train: ImageSet, unseen: ImageSet, seed: int, n: int = 200) -> dict:
    """``{kind: (images (m, 1, H, W) in [-1, 1], source index (m,), should_veto)}`` for up to ``n``
    seeded sources per kind (near-duplicates) and up to ``n`` unseen images."""
    rng = seeds.rng(seed, "reliability", "sources")
    pick = np.sort(rng.choice(len(train), size=min(n, len(train)), replace=False))
    subset = train.subset(pick)
    out = {"copy of the source": (subset.tensor(), pick, True),
           "noised copy (σ = 0.05)": (noised(subset, 0.05, seed)[0].tensor(), pick, True),
           "shifted copy (1 px, 2.5°)": (shifted(subset, 1, seed)[0].tensor(), pick, True)}
    pid = np.asarray(train.patient_ids).astype(str)
    others_src, others_img = [], []
    for s in pick:
        same = np.flatnonzero((pid == pid[s]) & (np.arange(len(pid)) != s))
        if len(same):
            others_src.append(s)
            others_img.append(int(rng.choice(same)))
    if others_src:
        out["another scan of the source's patient"] = (train.tensor(np.array(others_img)), np.array(others_src), True)
    take = np.sort(seeds.rng(seed, "reliability", "unseen").choice(len(unseen), size=min(n, len(unseen)),
                                                                  replace=False))
    out["unseen patient, random source"] = (unseen.subset(take).tensor(),
                                            random_sources(unseen.subset(take), len(train), seed), False)
    return out


def veto_flags(images: torch.Tensor, sources, defender_fn: Callable, threshold: float,
               copy_fn: Callable | None = None, identity_fn: Callable | None = None) -> dict:
    """``{"defender", "copy", "identity", "veto"}`` boolean arrays: what each rule, and the filter,
    flags (``copy_fn`` / ``identity_fn``: ratio functions, < 1 flags; None: the rule is off)."""
    prob = np.asarray(defender_fn(np.asarray(sources, dtype=np.int64), images), dtype=np.float64)
    copy = np.zeros(len(prob), bool) if copy_fn is None else np.asarray(copy_fn(images)) < 1.0
    identity = np.zeros(len(prob), bool) if identity_fn is None else np.asarray(identity_fn(images)) < 1.0
    return {"defender": prob >= threshold, "copy": copy, "identity": identity,
            "veto": (prob >= threshold) | copy | identity}


def veto_reliability(candidates: dict, defenders: dict[str, tuple[Callable, float]],
                     copy_fn: Callable | None = None, committee: tuple[Callable, float] | None = None,
                     identity_fn: Callable | None = None) -> pd.DataFrame:
    """One row per planted kind: the share vetoed by each defender (its own threshold, with the
    near-copy and identity rules), the defender alone (first defender), the near-copy rule alone,
    the identity rule alone (``identity_fn``, column only when given), the mean over defenders,
    and the share of candidates on which every defender's veto agrees.

    ``defenders``: ``{name: (defender_fn, threshold)}``, the first being the filter's own.
    ``committee``: the filter's veto when it is a committee of defenders
    (``sample_filter.committee_defender_fn``): column ``vetoed (the filter: committee)``, not
    counted in the mean or the agreement. The ``should veto`` column says what a perfect filter
    does (sensitivity rows: 1, specificity row: 0).
    """
    if not defenders:
        raise ValueError("veto_reliability needs at least one defender")
    rows = {}
    for kind, (images, sources, should) in candidates.items():
        flags = {name: veto_flags(images, sources, fn, t, copy_fn, identity_fn) for name, (fn, t) in defenders.items()}
        first = flags[next(iter(defenders))]
        vetoes = np.stack([f["veto"] for f in flags.values()])
        row = {"should veto": bool(should), "candidates": int(vetoes.shape[1])}
        row.update({f"vetoed ({name})": float(f["veto"].mean()) for name, f in flags.items()})
        row["defender alone"] = float(first["defender"].mean())
        row["near-copy rule alone"] = float(first["copy"].mean())
        if identity_fn is not None:
            row["identity rule alone"] = float(first["identity"].mean())
        row["mean over defenders"] = float(vetoes.mean())
        row["all defenders agree"] = float((vetoes.all(0) | ~vetoes.any(0)).mean())
        if committee is not None:
            row["vetoed (the filter: committee)"] = float(
                veto_flags(images, sources, *committee, copy_fn, identity_fn)["veto"].mean())
        rows[kind] = row
    table = pd.DataFrame(rows).T
    table.index.name = "candidate"
    return table
