"""Notebook 00's tables: the splits, label prevalence, and whether identity hides from pixels."""

from __future__ import annotations

import pandas as pd

from ..data.diagnostics import label_prevalence
from ..evaluation.retrieval import precision_at_1
from ..pipeline import Pipeline
from ..stages.data import load_splits
from ..stages.reid import load_verifier

__all__ = ["data_splits", "data_label_counts", "data_identity_precision_at_1"]


def data_splits(pipe: Pipeline) -> pd.DataFrame:
    """Images, patients and multi-label images per split."""
    return pd.DataFrame({name: {"images": len(s), "patients": s.n_patients,
                                "multi-label images": int((s.labels.sum(1) > 1).sum())}
                         for name, s in load_splits(pipe).items()}).T


def data_label_counts(pipe: Pipeline) -> pd.DataFrame:
    """Positive images per label and split, with the split sizes."""
    return label_prevalence(load_splits(pipe))["count"]


def data_identity_precision_at_1(pipe: Pipeline) -> pd.DataFrame:
    """Precision@1 of patient retrieval on the test split: raw pixels vs the trained defender.

    A meaningful testbed makes identity recognisable to a trained verifier but not to a pixel
    ruler (then a verifier has to learn anatomy, as on real radiographs)."""
    test = load_splits(pipe)["test"]
    rows = {"raw pixels (L2)": precision_at_1(test.tensor().flatten(1), test.patient_ids),
            "trained verifier (defender)": precision_at_1(load_verifier(pipe, "defender").embed(test.tensor()),
                                                          test.patient_ids)}
    table = pd.DataFrame(rows).T[["value", "lo", "hi", "n", "chance"]].rename(columns={"value": "precision@1",
                                                                                      "n": "queries"})
    table.index.name = "test patients"
    return table
