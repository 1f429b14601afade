"""Notebook 08's table: the guidance sweep, one row per w."""

from __future__ import annotations

import pandas as pd

from ..evaluation.sweep import pareto_front
from ..pipeline import Pipeline
from ..stages.sweep import load_sweep

__all__ = ["sweep_table", "sweep_choice"]

SWEEP_COLUMNS = ["n", "fd", "fd_test", "irs_alpha", "irs_adjusted", "irs_adjusted_lo", "irs_adjusted_hi", "auroc",
                 "auroc_lo", "auroc_hi", "diff_points", "src_rate", "src_lo", "src_hi", "all_rate", "seconds"]


def sweep_table(pipe: Pipeline) -> pd.DataFrame:
    """FD, adjusted IRS, downstream AUROC (Δ to real) and the auditor's re-id rate per guidance w."""
    return load_sweep(pipe)[SWEEP_COLUMNS]


def sweep_choice(points: pd.DataFrame) -> tuple[pd.Series, float]:
    """(Pareto mask over w on FD ↓, re-id ↓, adjusted IRS ↑, AUROC ↑; the Pareto w with the best AUROC)."""
    front = pareto_front(points, minimise=("fd", "src_rate"), maximise=("irs_adjusted", "auroc"))
    return front, float(points.loc[front, "auroc"].idxmax())
