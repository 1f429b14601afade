"""Guidance sweep (DESIGN step 9): fidelity vs diversity vs utility vs privacy over w.

For each guidance weight ``w`` the *raw* DiADM sampler (no privacy filter) draws one sample per
source for a seeded subset of training images, with the same per-source seeds at every ``w``
(common random numbers: differences between points come from ``w`` alone). Each point gets

* fidelity / diversity: Fréchet distance and adjusted IRS (``fidelity.fidelity_row``, in the
  same feature space as the main table);
* utility: mean AUROC on the real test split of the classifier trained on those samples;
* privacy: the AUDITOR's re-identification rate of each sample against its own source
  (``privacy.audit.reid_audit``), with its Wilson interval.

Raw samples, not filtered ones, because the sweep asks what guidance does to the *generator*:
stronger guidance sharpens samples toward their conditioning image — better fidelity, less
diversity, more identity kept — and the filter (which lowers guidance itself on retries) would
hide that. Settings: the ``sweep`` profile section (``SWEEP_DEFAULTS``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import config as config_mod

SWEEP_DEFAULTS: dict = {
    "guidances": [0.7, 1.0, 1.2, 1.4, 1.7],  # guidance weights w (>= 0; 1 = no guidance), the paper's range
    "n_sources": 300,        # sources per point: a seeded subset of the train split (None: all)
    "audit_k": 16,           # auditor: training images retrieved per sample before verification (>= 1)
    "audit_false_alarm": 0.05,  # vs-all re-id threshold: this rate on the val split's (unseen) patients
}


def sweep_config(cfg: dict) -> dict:
    """The ``sweep`` section over ``SWEEP_DEFAULTS``; bad values name the field."""
    s = config_mod.section(cfg, "sweep", SWEEP_DEFAULTS)
    g = s["guidances"]
    if not isinstance(g, (list, tuple)) or not g or not all(isinstance(w, (int, float)) and w >= 0 for w in g):
        raise config_mod.ConfigError(f"sweep.guidances={g!r}: must be a non-empty list of numbers >= 0")
    if len(set(map(float, g))) != len(g):
        raise config_mod.ConfigError(f"sweep.guidances={g!r}: duplicates")
    s["guidances"] = [float(w) for w in g]
    if s["n_sources"] is not None and (not isinstance(s["n_sources"], int) or s["n_sources"] < 2):
        raise config_mod.ConfigError(f"sweep.n_sources={s['n_sources']!r}: must be null or an integer >= 2")
    if not isinstance(s["audit_k"], int) or s["audit_k"] < 1:
        raise config_mod.ConfigError(f"sweep.audit_k={s['audit_k']!r}: must be an integer >= 1")
    if not isinstance(s["audit_false_alarm"], float) or not 0 < s["audit_false_alarm"] < 1:
        raise config_mod.ConfigError(f"sweep.audit_false_alarm={s['audit_false_alarm']!r}: must be a rate in (0, 1)")
    return s


def pareto_front(df: pd.DataFrame, minimise: tuple[str, ...] = (), maximise: tuple[str, ...] = ()) -> pd.Series:
    """Boolean Series: True for rows no other row dominates (at least as good on every
    objective and strictly better on one). NaN never dominates and is never dominated."""
    cols = list(minimise) + list(maximise)
    v = np.column_stack([df[c].to_numpy(float) for c in minimise] + [-df[c].to_numpy(float) for c in maximise]) \
        if cols else np.zeros((len(df), 0))
    keep = np.ones(len(df), dtype=bool)
    for i in range(len(df)):
        for j in range(len(df)):
            if i != j and np.isfinite(v[[i, j]]).all() and (v[j] <= v[i]).all() and (v[j] < v[i]).any():
                keep[i] = False
                break
    return pd.Series(keep, index=df.index, name="pareto")
