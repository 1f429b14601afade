"""Notebook 05's tables: the releases, what the filter saw, and what choosing by consistency buys."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import seeds
from ..pipeline import Pipeline
from ..privacy.generation import DIADM_STREAM, redraw_candidates
from ..privacy.sample_filter import verifier_defender_fn
from ..releases import RELEASES
from ..stages.data import load_splits
from ..stages.generate import filter_models, load_audit, load_release, release_info
from ..stages.reid import load_verifier

__all__ = ["generate_releases", "candidate_sources", "candidate_examples", "generate_label_consistency",
           "rescore_release"]


def generate_releases(pipe: Pipeline) -> pd.DataFrame:
    """One row per release: samples, distinct sources, seconds of its stage."""
    rows = {}
    for name in RELEASES:
        release, source_index = load_release(pipe, name)
        rows[name] = {"samples": len(release), "sources": len(np.unique(source_index)),
                      "seconds": release_info(pipe, name)["seconds"]}
    table = pd.DataFrame(rows).T
    table.index.name = "release"
    return table


def candidate_sources(audit: pd.DataFrame, n: int = 4) -> list[int]:
    """``n`` sources to show, preferring ones whose first attempt mixes flagged and passed candidates."""
    first = audit[(audit["candidate"] >= 0) & (audit["attempt"] == 0)]
    by_source = first.groupby("source_index")["flagged"].agg(["sum", "size"])
    mixed = by_source[(by_source["sum"] > 0) & (by_source["sum"] < by_source["size"])].index.tolist()
    others = [s for s in by_source.index if s not in mixed]
    return [int(s) for s in (mixed[:max(n - 1, 1)] + others)[:n]]


def candidate_examples(pipe: Pipeline, sources, attempt: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """All K candidates of ``attempt`` for a few ``sources``, redrawn from their recorded seeds
    (exactly the images the filter judged) → (images (n, K, H, W) uint8, one row per candidate:
    source_index, candidate, seed, guidance, defender_prob, flagged, bce, decision)."""
    train = load_splits(pipe)["train"]
    m = filter_models(pipe, train)
    stream = seeds.stream_id(int(pipe.cfg["seed"]), *DIADM_STREAM)
    return redraw_candidates(sources, attempt, m.params, stream, m.sample_fn, m.defender_fn,
                             m.classifier_fn, m.source_probs, load_audit(pipe), copy_fn=m.copy_fn)


def generate_label_consistency(audit: pd.DataFrame) -> pd.DataFrame:
    """Mean BCE to the source of the first candidate (any / survivors) vs the filter's choice."""
    cand = audit[audit["candidate"] >= 0]
    first = cand[cand["attempt"] == 0]
    return pd.DataFrame({
        "first candidate (any)": [first.loc[first["candidate"] == 0, "bce"].mean()],
        "first candidate (survivors)": [first.loc[(first["candidate"] == 0) & ~first["flagged"], "bce"].mean()],
        "chosen by the filter": [cand.loc[cand["decision"] == "chosen", "bce"].mean()],
    }, index=["mean BCE to source"]).T


def rescore_release(pipe: Pipeline, name: str, role: str = "defender") -> np.ndarray:
    """P(same patient) of every released sample against its source by the ``role`` verifier
    (``"defender"`` re-checks the filter's hard constraint; ``"auditor"`` is independent)."""
    release, source_index = load_release(pipe, name)
    if len(release) == 0:
        return np.zeros(0)
    train = load_splits(pipe)["train"]
    unique = np.unique(source_index)
    fn = verifier_defender_fn(load_verifier(pipe, role), train.tensor(unique))
    position = {int(s): i for i, s in enumerate(unique)}
    return np.asarray(fn(np.array([position[int(s)] for s in source_index]), release.tensor()))
