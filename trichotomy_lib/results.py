"""What notebooks leave behind: numbers as JSON, tables as CSV + Markdown, figures as PNG + PDF.

Numbers go to ``runs/<profile>/results/<notebook>.json`` (batch users, tests and the summary
read them there); tables and figures go to the profile's ``figures_dir``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from . import config as config_mod
from .io import atomic_path, atomic_write_json, atomic_write_text


def results_path(cfg: dict, notebook: str) -> Path:
    return config_mod.run_dir(cfg) / "results" / f"{notebook}.json"


def save_results(cfg: dict, notebook: str, numbers: dict) -> Path:
    """Write the numbers behind a notebook's tables (atomically) and return the path."""
    path = results_path(cfg, notebook)
    atomic_write_json(path, {"notebook": notebook, "profile": cfg["profile"], "results": numbers})
    return path


def load_results(cfg: dict, notebook: str) -> dict:
    path = results_path(cfg, notebook)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet; run notebook {notebook} for profile {cfg['profile']!r} first")
    return json.loads(path.read_text())["results"]


def _format_cell(value, floatfmt: str) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else format(value, floatfmt)
    return str(value)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f", index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency)."""
    frame = df.reset_index() if index else df
    header = [str(c) for c in frame.columns]
    rows = [[_format_cell(v, floatfmt) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_table(cfg: dict, df: pd.DataFrame, name: str, floatfmt: str = ".3f", index: bool = True) -> Path:
    """``<figures_dir>/<name>.csv`` and ``.md``; returns the Markdown path."""
    out = config_mod.figures_dir(cfg)
    with atomic_path(out / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=index)
    atomic_write_text(out / f"{name}.md", to_markdown(df, floatfmt, index))
    return out / f"{name}.md"


def save_figure(cfg: dict, fig, name: str, dpi: int = 120) -> Path:
    """``<figures_dir>/<name>.png`` and ``.pdf``; returns the PNG path."""
    out = config_mod.figures_dir(cfg)
    for ext in ("png", "pdf"):
        with atomic_path(out / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=None if ext == "png" else {"CreationDate": None})
    return out / f"{name}.png"
