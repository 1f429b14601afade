"""Notebook 03's tables: what the pseudo-conditioning embedding carries — identity and findings."""

from __future__ import annotations

import pandas as pd

from ..encoders.analysis import linear_probe, pixel_features
from ..evaluation.retrieval import precision_at_1
from ..pipeline import Pipeline
from ..stages.data import load_splits
from ..stages.encoder import load_embeddings

__all__ = ["encoder_identity", "encoder_linear_probe"]


def encoder_identity(pipe: Pipeline) -> pd.DataFrame:
    """Patient-retrieval precision@1 in the embedding and in raw pixels, train and test split."""
    splits = load_splits(pipe)
    rows = {}
    for split in ("train", "test"):
        for name, x in (("embedding", load_embeddings(pipe, split)), ("pixels", pixel_features(splits[split]))):
            rows[(split, name)] = precision_at_1(x, splits[split].patient_ids)
    table = pd.DataFrame(rows).T.rename_axis(["split", "features"])
    table["p_at_1 / chance"] = table["value"] / table["chance"]
    return table.rename(columns={"value": "p_at_1", "n": "n_queries"})


def encoder_linear_probe(pipe: Pipeline) -> pd.DataFrame:
    """Per-finding linear-probe AUROC on the embedding vs on 2×2-pooled pixels (16×16 at 32 px;
    a probe on every raw pixel fits slowly and no better)."""
    splits = load_splits(pipe)
    train, test = splits["train"], splits["test"]
    seed = int(pipe.cfg["seed"])
    emb = linear_probe(load_embeddings(pipe, "train"), train.labels, load_embeddings(pipe, "test"), test.labels, seed=seed)
    pix = linear_probe(pixel_features(train, pool=2), train.labels, pixel_features(test, pool=2), test.labels, seed=seed)
    return pd.DataFrame({"embedding": emb["auroc"], "pixels (pooled 2×2)": pix["auroc"], "test positives": emb["n_pos"]})
