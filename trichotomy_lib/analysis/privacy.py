"""Notebook 06's tables: the privacy audit of every release, and the filter's operating point."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..pipeline import Pipeline
from ..privacy.attack import attack_release
from ..privacy.audit import EmbeddingCache, veto_tradeoff
from ..privacy.pso import ATTACKER_LABELS
from ..stages.data import load_splits
from ..stages.generate import copy_veto, release_info
from ..stages.populations import load_populations
from ..stages.privacy import attacker_spaces, load_any_release
from ..stages.reid import load_verifier
from .utility import _benchmark_table

__all__ = ["privacy", "privacy_attackers", "privacy_weight_sweep", "privacy_controls", "controls_monotone",
           "filter_reliability", "filter_veto_column", "privacy_filter_tradeoff", "privacy_copy_veto_lever",
           "measurable_risk", "VETO_RULE", "load_veto_rule"]


def _ci(rate, lo, hi, digits: int = 2) -> str:
    if rate is None or not np.isfinite(rate):
        return "–"
    return f"{rate:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _any_column(df: pd.DataFrame) -> str:
    """Header of the vs-all column, naming its calibration (false-alarm rate on held-out patients)."""
    fa = df["all_false_alarm"].iloc[0] if "all_false_alarm" in df else np.nan
    if fa is None or not np.isfinite(fa):
        return "re-id vs any training patient (pairwise threshold)"
    return f"re-id vs any training patient ({fa:.0%} of held-out)"


def privacy(df: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """The privacy table: one row per release (display name), rates with 95 % CIs as text.

    ``df``: ``stages.privacy.load_privacy``'s results; ``kind``: the predicate kind of the attack
    columns (default: the run's primary kind).
    """
    kind = kind or str(df["pso_kind"].iloc[0])
    rows = {}
    for _, r in df.iterrows():
        def f(c):
            return r.get(c, np.nan)
        rows[r["label"]] = {
            "n released": int(r["n_released"]),
            "re-id vs source": _ci(f("src_rate"), f("src_lo"), f("src_hi")),
            _any_column(df): _ci(f("all_rate"), f("all_lo"), f("all_hi")),
            "nearest = source patient": _ci(f("nearest_src_rate"), f("nearest_src_lo"), f("nearest_src_hi")),
            "pixel NN closer than held-out 5 %": _ci(f("nn_close_rate"), f("nn_close_lo"), f("nn_close_hi")),
            f"PSO attack ({kind})": _ci(f(f"{kind}_attack_rate"), f(f"{kind}_attack_lo"), f(f"{kind}_attack_hi")),
            "control": _ci(f(f"{kind}_control_rate"), f(f"{kind}_control_lo"), f(f"{kind}_control_hi")),
            "chance B(n, w)": f"{f(f'{kind}_cn_baseline'):.3f}",
            "risk": _ci(f(f"{kind}_risk"), f(f"{kind}_risk_lo"), f(f"{kind}_risk_hi")),
        }
        if "strongest_attacker" in r:
            rows[r["label"]]["strongest attacker"] = ATTACKER_LABELS.get(r["strongest_attacker"], r["strongest_attacker"])
            rows[r["label"]][f"its risk [{r['strongest_level']:.1%} CI: {int(r['n_attackers'])} attackers]"] = _ci(
                f("strongest_risk"), f("strongest_risk_lo"), f("strongest_risk_hi"))
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "release"
    return out


def privacy_attackers(df: pd.DataFrame) -> pd.DataFrame:
    """Every attacker on every release: attack and control rates, risk [95 % CI], the risk before
    clipping at 0, and how often an isolated patient is the released image's own source."""
    rows = []
    for release, r in df.iterrows():
        for prefix, name in ATTACKER_LABELS.items():
            if f"{prefix}_risk_hi" not in r or not np.isfinite(r[f"{prefix}_risk_hi"]):
                continue
            rows.append({"release": r["label"], "attacker": name,
                         "attack": _ci(r[f"{prefix}_attack_rate"], r[f"{prefix}_attack_lo"], r[f"{prefix}_attack_hi"]),
                         "control": _ci(r[f"{prefix}_control_rate"], r[f"{prefix}_control_lo"], r[f"{prefix}_control_hi"]),
                         "risk": _ci(r[f"{prefix}_risk"], r[f"{prefix}_risk_lo"], r[f"{prefix}_risk_hi"]),
                         "risk before clipping": round(float(r.get(f"{prefix}_risk_unclipped", np.nan)), 3),
                         "isolates its source": round(float(r.get(f"{prefix}_correct_rate", np.nan)), 3),
                         "predicates": int(r[f"{prefix}_n_predicates"])})
    return pd.DataFrame(rows).set_index(["release", "attacker"])


def privacy_weight_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """The strongest attacker's risk [corrected CI] on every release at every weight factor.

    ``sweep``: ``stages.privacy.load_weight_sweep`` (one row per release and factor). One row per
    release (display name, in the sweep's order), one column per factor ``w·n``: the risk, its
    interval corrected for the attackers tried (as the headline's) and which attacker it is.
    One row saying so when nothing was swept (``privacy.weight_sweep`` empty)."""
    if sweep.empty:
        return pd.DataFrame({"weight sweep": ["not run: privacy.weight_sweep is empty"]},
                            index=pd.Index(["–"], name="release"))
    missing = [c for c in ("label", "weight_factor", "strongest_attacker", "strongest_risk", "strongest_risk_lo",
                           "strongest_risk_hi") if c not in sweep.columns]
    if missing:
        raise ValueError(f"weight sweep rows lack column(s) {missing}; rerun stage privacy_weight_sweep")
    cells = {}
    for _, r in sweep.iterrows():
        cells.setdefault(r["label"], {})[f"w·n = {r['weight_factor']:g}"] = (
            _ci(r["strongest_risk"], r["strongest_risk_lo"], r["strongest_risk_hi"])
            + f" {ATTACKER_LABELS.get(r['strongest_attacker'], r['strongest_attacker'])}")
    out = pd.DataFrame.from_dict(cells, orient="index")
    out.index.name = "release"
    return out


def _attackers_in(df: pd.DataFrame) -> list[str]:
    return [prefix for prefix in ATTACKER_LABELS if f"{prefix}_risk_hi" in df.columns]


def measurable_risk(df: pd.DataFrame, names) -> pd.DataFrame:
    """Is a risk *measured* on each release of ``names``? The attacker whose lower bound, corrected
    for the number of attackers tried (as the headline's upper bound), is highest.

    A lower bound above 0 means that attacker singles out training patients more often than the
    control population, beyond what chance and the choice among attackers explain. One row per
    release (display name): that attacker, its risk with the corrected interval, the lower bound,
    and the strongest attacker by upper bound beside it. Releases missing from ``df`` are skipped.
    """
    rows = {}
    for name in names:
        if name not in df.index:
            continue
        r = df.loc[name]
        lows = {p: float(r[f"{p}_risk_lo_corrected"]) for p in _attackers_in(df)
                if f"{p}_risk_lo_corrected" in r and np.isfinite(r[f"{p}_risk_lo_corrected"])}
        if not lows:
            raise ValueError(f"release {name!r} has no attacker with a corrected interval")
        best = max(lows, key=lambda p: (lows[p], r[f"{p}_risk"]))
        rows[r["label"]] = {"attacker with the highest lower bound": ATTACKER_LABELS[best],
                            "its risk (corrected CI)": _ci(r[f"{best}_risk"], lows[best], r[f"{best}_risk_hi_corrected"]),
                            "lower bound": lows[best], "measured (lower bound > 0)": lows[best] > 0,
                            "strongest by upper bound": ATTACKER_LABELS.get(r["strongest_attacker"], r["strongest_attacker"])}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "release"
    return out


def privacy_controls(controls: pd.DataFrame) -> pd.DataFrame:
    """Graded leaks and negative controls: every attacker's risk [95 % CI] per control release,
    and the strongest attacker (its bound corrected for the number of attackers)."""
    rows = {}
    for name, r in controls.iterrows():
        row = {"family": r["family"]}
        for prefix in _attackers_in(controls):
            row[ATTACKER_LABELS[prefix]] = _ci(r[f"{prefix}_risk"], r[f"{prefix}_risk_lo"], r[f"{prefix}_risk_hi"])
        row["strongest"] = ATTACKER_LABELS.get(r["strongest_attacker"], r["strongest_attacker"])
        row["its risk (corrected CI)"] = _ci(r["strongest_risk"], r["strongest_risk_lo"], r["strongest_risk_hi"])
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "control release"
    return out


def controls_monotone(controls: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """Per ladder (noise, blur, shift) and attacker: does the risk fall (within ``tolerance``) as
    the leak weakens? One row per (family, attacker) with the risks in ladder order."""
    rows = []
    for family, part in controls[controls["parameter"].notna()].groupby("family"):
        part = part.sort_values("parameter")
        for prefix in _attackers_in(controls):
            risk = part[f"{prefix}_risk"].to_numpy(float)
            rows.append({"family": family, "attacker": ATTACKER_LABELS[prefix],
                         "risks (strong → weak leak)": ", ".join(f"{x:.2f}" for x in risk),
                         "falls": bool(np.all(np.diff(risk) <= tolerance))})
    return pd.DataFrame(rows).set_index(["family", "attacker"])


VETO_RULE = "veto_rule"  # <figures_dir>/veto_rule.csv, written by benchmarks/veto_rule.py


def load_veto_rule(cfg: dict) -> pd.DataFrame | None:
    """The profile's measured veto rules (``<figures_dir>/veto_rule.csv``, from
    ``benchmarks/veto_rule.py --profile <profile>``): per (recall r, rule), the share of fresh
    candidates the veto passes and a stand-in auditor's re-identification gap to class-conditional
    samples, in points with its 95 % interval; None when it was not measured."""
    table = _benchmark_table(cfg, VETO_RULE, {"recall r", "rule", "pass rate", "gap (points)", "gap lo", "gap hi"})
    return None if table is None else table.set_index(["recall r", "rule"])


def filter_veto_column(table: pd.DataFrame) -> str:
    """The reliability table's column of what the filter vetoes: its committee's, where the veto
    is a committee of defenders (``generate.filter.defenders`` > 1), else its defender's."""
    committee = "vetoed (the filter: committee)"
    return committee if committee in table.columns else next(c for c in table.columns if c.startswith("vetoed ("))


def filter_reliability(table: pd.DataFrame) -> pd.DataFrame:
    """The reliability table with its verdict per row (the filter's veto): sensitivity rows
    should be vetoed, the unseen-patient row should pass."""
    out = table.copy()
    first = filter_veto_column(out)
    out["verdict"] = np.where(out["should veto"], "sensitivity " + (out[first] * 100).round(1).astype(str) + " %",
                              "specificity " + ((1 - out[first]) * 100).round(1).astype(str) + " %")
    return out


def privacy_copy_veto_lever(pipe: Pipeline, quantiles=(0.05, 0.1, 0.2, 0.3)) -> pd.DataFrame:
    """The near-copy rule's quantile q as a lever: on the raw DiADM release (each source's first
    candidate), the share of candidates the rule passes at each q and every attacker's risk on
    those that pass — measured, so the notebook can say which setting would close a gap. (An
    analysis of one draw per source: the filter itself redraws vetoed sources, which raises the
    yield, not the risk of what passes.)"""
    release, source_index = load_any_release(pipe, "diadm_raw")
    train = load_splits(pipe)["train"]
    pops = load_populations(pipe)
    params = pipe.cfg["privacy"]
    auditor = load_verifier(pipe, "auditor")
    embed, attackers = EmbeddingCache(auditor, params["batch_size"]), attacker_spaces(pipe, params["attackers"])
    veto = copy_veto(pipe, train, min(quantiles), identity=False)
    dist = veto.distances(release.tensor())
    rows = []
    for q in quantiles:
        keep = np.ones(len(release), bool)
        for s, t in veto.thresholds_at(q).items():
            keep &= dist[s] >= t
        row = {"copy quantile q": q, "passes": float(keep.mean())}
        if keep.sum() >= 10:
            r = attack_release(release.subset(keep), np.asarray(source_index)[keep], train, pops["control"], auditor,
                               {"seed": pipe.cfg["seed"], "privacy": params}, heldout=pops["weight"], embed=embed,
                               name=f"lever q={q:g}", spaces=attackers)
            for prefix, name in ATTACKER_LABELS.items():
                if f"{prefix}_risk" in r:
                    row[name] = _ci(r[f"{prefix}_risk"], r[f"{prefix}_risk_lo"], r[f"{prefix}_risk_hi"])
            row["strongest (corrected CI)"] = _ci(r["strongest_risk"], r["strongest_risk_lo"], r["strongest_risk_hi"])
            row["strongest upper bound"] = r["strongest_risk_hi"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("copy quantile q")


def privacy_filter_tradeoff(pipe: Pipeline, thresholds=(0.9, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)) -> pd.DataFrame:
    """The defender's veto threshold vs what the AUDITOR still finds (``audit.veto_tradeoff``), on
    the raw DiADM release (each source's first candidate, before any veto), the defender
    comparing with the source image only (the near-copy rule aside). Reads the defender too: an
    analysis of the filter's operating point, not part of the audit. Indexed by threshold; the
    threshold the filter ran with is marked (with a committee veto, ``generate.filter.defenders`` > 1,
    its first defender's: the table reads that defender alone)."""
    release, source_index = load_any_release(pipe, "diadm_raw")
    train = load_splits(pipe)["train"].subset(np.asarray(source_index))
    probs = {}
    for role in ("defender", "auditor"):
        v = load_verifier(pipe, role)
        probs[role] = v.probability(v.score_pairs(v.embed(release), v.embed(train))).numpy()
    used = float(release_info(pipe, "diadm_filter")["veto_threshold"])  # the threshold the filter ran with
    rows = veto_tradeoff(probs["defender"], probs["auditor"], sorted({*map(float, thresholds), used}, reverse=True),
                         auditor_threshold=float(pipe.cfg["privacy"]["audit_threshold"]))
    df = pd.DataFrame(rows).set_index("threshold")
    df["profile's threshold"] = [t == used for t in df.index]
    return df
