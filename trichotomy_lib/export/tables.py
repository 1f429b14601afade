"""The aggregate numbers an export publishes, checked and reduced to plain Python values.

Only three things besides the images and their labels reach a shared dataset: the privacy
table (one row per attacker), the utility table (one row per training set) and the
generator's settings. Each is checked here against a closed list of fields, so per-sample
data (patient ids, source names, seeds, indices) cannot ride along in an extra column.

Privacy rows (``PRIVACY_FIELDS``; the field names of ``privacy.pso.evaluate_pso``):

    attacker                              name of the attack (str, unique)
    weight                                predicate weight, in (0, 1]
    attack_rate, attack_lo, attack_hi     isolation rate on the training patients, 95 % CI
    control_rate, control_lo, control_hi  the same on patients never trained on
    risk, risk_lo, risk_hi                (attack − control) / (1 − control) with its CI
    optional: weight_lo, weight_hi, n_predicates, n_population, warning

Utility rows (``UTILITY_FIELDS``), AUROC as a fraction in [0, 1]:

    training_set                          e.g. "this release" (required once), "real data"
    mean_auroc, mean_auroc_lo, mean_auroc_hi
    optional: delta_points, delta_lo, delta_hi (100 × difference to the real-data
              classifier), n_train, test_set
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

PRIVACY_FIELDS = ("attacker", "weight", "attack_rate", "attack_lo", "attack_hi", "control_rate", "control_lo",
                  "control_hi", "risk", "risk_lo", "risk_hi")
PRIVACY_OPTIONAL = ("weight_lo", "weight_hi", "n_predicates", "n_population", "warning")
UTILITY_FIELDS = ("training_set", "mean_auroc", "mean_auroc_lo", "mean_auroc_hi")
UTILITY_OPTIONAL = ("delta_points", "delta_lo", "delta_hi", "n_train", "test_set")
THIS_RELEASE = "this release"   # the utility row that describes the exported images

_TOL = 1e-9                     # slack on "lo <= value <= hi" (intervals come from floating point)
_MAX_LIST = 32                  # settings lists longer than this look like per-sample data
_MAX_TEXT = 200


def _records(table, what: str) -> list[dict]:
    """A DataFrame (index kept when it is named), a list of mappings or one mapping → dicts."""
    if isinstance(table, pd.DataFrame):
        frame = table.reset_index() if table.index.name is not None else table
        return [dict(r) for r in frame.to_dict("records")]
    if isinstance(table, Mapping):
        return [dict(table)]
    if isinstance(table, Sequence) and not isinstance(table, (str, bytes)):
        out = []
        for i, row in enumerate(table):
            if not isinstance(row, Mapping):
                raise ValueError(f"{what} row {i}: expected a mapping of field → value, got {type(row).__name__}")
            out.append(dict(row))
        return out
    raise ValueError(f"{what}: expected a DataFrame or a list of rows, got {type(table).__name__}")


def _missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _number(v, where: str, lo: float = 0.0, hi: float = 1.0, low_open: bool = False) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: expected a number, got {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError(f"{where}: is {x} (every published number must be finite)")
    if x < lo or x > hi or (low_open and x == lo):
        raise ValueError(f"{where}: {x} is outside {'(' if low_open else '['}{lo}, {hi}]")
    return x


def _count(v, where: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not float(v).is_integer() or v < 1:
        raise ValueError(f"{where}: expected an integer >= 1, got {v!r}")
    return int(v)


def check_text(v, where: str) -> str:
    """``v`` stripped, if it is a non-empty string of one line (<= 200 characters, no "|")."""
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{where}: expected a non-empty string, got {v!r}")
    if any(c in v for c in "\r\n|") or len(v) > _MAX_TEXT:
        raise ValueError(f"{where}: must be one line of at most {_MAX_TEXT} characters without '|', got {v!r}")
    return v.strip()


def _fields(row: dict, required, optional, what: str) -> None:
    missing = [f for f in required if f not in row]
    unknown = sorted(set(row) - set(required) - set(optional))
    if missing:
        raise ValueError(f"{what}: missing field(s) {missing}")
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; an export publishes only {list(required)} "
                         f"and optionally {list(optional)}")


def _interval(row: dict, out: dict, value: str, lo: str, hi: str, where: str, low: float = 0.0,
              high: float = 1.0) -> None:
    for f in (value, lo, hi):
        out[f] = _number(row[f], f"{where}: {f}", low, high)
    if not out[lo] - _TOL <= out[value] <= out[hi] + _TOL:
        raise ValueError(f"{where}: need {lo} <= {value} <= {hi}, got {out[lo]}, {out[value]}, {out[hi]}")


def check_privacy(table) -> list[dict]:
    """The privacy table as checked plain rows (see the module docstring for the fields).

    Raises ``ValueError`` naming the row and field for a missing or unknown field, a NaN or
    infinite number, a rate outside [0, 1], a weight outside (0, 1], ``lo <= value <= hi``
    violated, or a duplicate attacker name.
    """
    rows = _records(table, "privacy")
    if not rows:
        raise ValueError("privacy: the table has no attacker rows; an unaudited release cannot be exported")
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"privacy row {i}"
        _fields(row, PRIVACY_FIELDS, PRIVACY_OPTIONAL, where)
        clean = {"attacker": check_text(row["attacker"], f"{where}: attacker")}
        where = f"privacy row {i} ({clean['attacker']})"
        if clean["attacker"] in seen:
            raise ValueError(f"{where}: duplicate attacker name")
        seen.add(clean["attacker"])
        clean["weight"] = _number(row["weight"], f"{where}: weight")  # an estimate: 0 when no held-out patient matched
        for name in ("attack", "control", "risk"):
            value = "risk" if name == "risk" else f"{name}_rate"
            _interval(row, clean, value, f"{name}_lo", f"{name}_hi", where)
        if not _missing(row.get("weight_lo")) or not _missing(row.get("weight_hi")):
            _interval({**row, "weight": clean["weight"]}, clean, "weight", "weight_lo", "weight_hi", where)
        for f in ("n_predicates", "n_population"):
            if not _missing(row.get(f)):
                clean[f] = _count(row[f], f"{where}: {f}")
        if not _missing(row.get("warning")):
            clean["warning"] = check_text(row["warning"], f"{where}: warning")
        out.append(clean)
    return out


def check_utility(table) -> list[dict]:
    """The utility table as checked plain rows; exactly one row is ``THIS_RELEASE``.

    Raises ``ValueError`` naming the row and field (as ``check_privacy``); deltas are in
    AUROC points and must be finite, within [-100, 100].
    """
    rows = _records(table, "utility")
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"utility row {i}"
        _fields(row, UTILITY_FIELDS, UTILITY_OPTIONAL, where)
        clean = {"training_set": check_text(row["training_set"], f"{where}: training_set")}
        where = f"utility row {i} ({clean['training_set']})"
        if clean["training_set"] in seen:
            raise ValueError(f"{where}: duplicate training_set")
        seen.add(clean["training_set"])
        _interval(row, clean, "mean_auroc", "mean_auroc_lo", "mean_auroc_hi", where)
        deltas = [f for f in ("delta_points", "delta_lo", "delta_hi") if not _missing(row.get(f))]
        if deltas and len(deltas) < 3:
            raise ValueError(f"{where}: give all of delta_points, delta_lo, delta_hi or none")
        if deltas:
            _interval(row, clean, "delta_points", "delta_lo", "delta_hi", where, -100.0, 100.0)
        if not _missing(row.get("n_train")):
            clean["n_train"] = _count(row["n_train"], f"{where}: n_train")
        if not _missing(row.get("test_set")):
            clean["test_set"] = check_text(row["test_set"], f"{where}: test_set")
        out.append(clean)
    if THIS_RELEASE not in seen:
        raise ValueError(f"utility: no row with training_set == {THIS_RELEASE!r} (the classifier trained on the "
                         f"exported images); got {sorted(seen)}")
    return out


def _setting(v, where: str):
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{where}: is {v} (settings must be finite)")
        return v
    if isinstance(v, str):
        return check_text(v, where) if v else v
    raise ValueError(f"{where}: expected a number, string, bool or null, got {type(v).__name__}")


def check_settings(settings: Mapping, prefix: str = "settings") -> dict:
    """Generator settings flattened to ``{"a.b": scalar or short list}``.

    Nested mappings become dotted keys. Values: None, bool, int, finite float, one-line
    string (at most 200 characters), or a list of those with at most 32 entries — a longer
    list would be per-sample data, which never belongs in a dataset card.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"{prefix}: expected a mapping, got {type(settings).__name__}")
    out = {}
    for key, v in settings.items():
        if not isinstance(key, str) or not key.strip() or any(c in key for c in "\r\n|"):
            raise ValueError(f"{prefix}: key {key!r} must be a non-empty string without '|' or newlines")
        where = f"{prefix}.{key}"
        if isinstance(v, Mapping):
            for k, x in check_settings(v, where).items():
                if f"{key}.{k}" in out:
                    raise ValueError(f"{where}.{k}: given twice (nested and dotted)")
                out[f"{key}.{k}"] = x
            continue
        if key in out:
            raise ValueError(f"{where}: given twice (nested and dotted)")
        if isinstance(v, (list, tuple, np.ndarray)):
            if len(v) > _MAX_LIST:
                raise ValueError(f"{where}: a list of {len(v)} values (> {_MAX_LIST}) looks like per-sample data; "
                                 "only settings go into the card")
            out[key] = [_setting(x, f"{where}[{j}]") for j, x in enumerate(v)]
        else:
            out[key] = _setting(v, where)
    return out


# ----------------------------------------------------------------------------- adapters
def attacker_rows(release_row: Mapping, names: Mapping[str, str] | None = None) -> list[dict]:
    """Privacy rows from one ``privacy.pso.evaluate_release`` result (``"<kind>_<field>"`` keys).

    Every kind with a ``"<kind>_risk_hi"`` key becomes a row (the ``"pso_*"`` repeat of the
    primary kind and the ``"strongest_*"`` summary are skipped); ``names`` maps kinds to display names (default: the kind).
    Only the aggregate fields listed in ``PRIVACY_FIELDS``/``PRIVACY_OPTIONAL`` are taken.
    """
    kinds = [k[: -len("_risk_hi")] for k in release_row
             if k.endswith("_risk_hi") and k not in ("pso_risk_hi", "strongest_risk_hi")]  # repeats, not attackers
    if not kinds:
        raise ValueError("attacker_rows: no '<kind>_risk_hi' field in the release row")
    rows = []
    for kind in kinds:
        row = {"attacker": (names or {}).get(kind, kind)}
        for f in PRIVACY_FIELDS[1:] + PRIVACY_OPTIONAL:
            if f"{kind}_{f}" in release_row:
                row[f] = release_row[f"{kind}_{f}"]
            elif f in PRIVACY_FIELDS:
                raise ValueError(f"attacker_rows: field {kind}_{f} missing from the release row")
        rows.append(row)
    return rows


def utility_rows(rows: Mapping[str, Mapping], release: str, labels: Mapping[str, str] | None = None,
                 n_train: Mapping[str, int] | None = None, test_set: str | None = None) -> list[dict]:
    """Utility rows from ``evaluation.utility.utility_row`` results (name → row).

    ``release``: the key of the row trained on the exported images (renamed ``THIS_RELEASE``);
    ``labels`` renames the others; the real-data row (Δ = 0 exactly) gets no delta.
    """
    if release not in rows:
        raise ValueError(f"utility_rows: release {release!r} not among {sorted(rows)}")
    out = []
    for name, r in rows.items():
        row = {"training_set": THIS_RELEASE if name == release else (labels or {}).get(name, name),
               "mean_auroc": r["auroc"]["mean"], "mean_auroc_lo": r["lo"]["mean"], "mean_auroc_hi": r["hi"]["mean"]}
        if not (r.get("diff_points") == r.get("diff_lo") == r.get("diff_hi") == 0):
            row.update(delta_points=r["diff_points"], delta_lo=r["diff_lo"], delta_hi=r["diff_hi"])
        if n_train is not None and name in n_train:
            row["n_train"] = n_train[name]
        if test_set is not None:
            row["test_set"] = test_set
        out.append(row)
    return out
