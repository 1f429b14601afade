"""What the filter's audit table says: one row per source, and the run's summary numbers.

The audit (``sample_filter.run_filter``) has one row per drawn candidate and one per skipped
source. These summaries are what notebook 05 and the release's ``release.json`` report: how
many candidates were vetoed, how many retries a source needed, how far guidance fell.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["per_source", "filter_summary"]


def per_source(audit: pd.DataFrame) -> pd.DataFrame:
    """One row per source: attempts used, final guidance, candidates drawn / flagged, outcome."""
    cand = audit[audit["candidate"] >= 0]
    g = cand.groupby("source_index")
    out = pd.DataFrame({
        "attempts": g["attempt"].max() + 1,
        "final_guidance": g["guidance"].min(),
        "n_drawn": g.size(),
        "n_flagged": g["flagged"].sum().astype(int),
        "outcome": g["source_outcome"].first(),
    })
    chosen = cand[cand["decision"] == "chosen"].set_index("source_index")["bce"]
    out["chosen_bce"] = chosen.reindex(out.index)
    return out


def filter_summary(audit: pd.DataFrame) -> dict:
    """Headline numbers of a filter run (all plain floats/ints, JSON-ready)."""
    cand = audit[audit["candidate"] >= 0]
    src = per_source(audit)
    first = cand[cand["attempt"] == 0]
    accepted = src["outcome"] == "accepted"
    return {
        "n_sources": int(len(src)),
        "n_accepted": int(accepted.sum()),
        "n_skipped": int((~accepted).sum()),
        "n_candidates": int(len(cand)),
        "n_released_best": int((cand["decision"] == "chosen").sum()),
        "n_released_second": int((cand["decision"] == "second_best").sum()),
        "n_released_kept": int((cand["decision"] == "kept").sum()),  # survivors of rank 3 and beyond
        "first_attempt_flag_rate": float(first["flagged"].mean()) if len(first) else float("nan"),
        "flag_rate": float(cand["flagged"].mean()) if len(cand) else float("nan"),
        "sources_all_flagged_first_attempt": int((src["attempts"] > 1).sum() + (~accepted & (src["attempts"] == 1)).sum()),
        "max_attempts_used": int(src["attempts"].max()) if len(src) else 0,
        "mean_attempts": float(src["attempts"].mean()) if len(src) else float("nan"),
        "min_guidance": float(src["final_guidance"].min()) if len(src) else float("nan"),
        "candidates_per_accepted": float(len(cand) / max(int(accepted.sum()), 1)),
        "mean_chosen_bce": float(src.loc[accepted, "chosen_bce"].mean()) if accepted.any() else float("nan"),
    }
