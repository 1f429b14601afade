"""Stages ``control_population`` and ``privacy_eval``: can anyone single out a patient? (DESIGN step 7)

``control_population`` draws the patients the attack is compared against — never trained on,
same distribution as the training split: for PhantomCXR two fresh populations from their own
seed streams, ``control/`` (as many patients as the training split; the control rate) and
``weight/`` (threshold calibration and predicate weights); for file-list data the val + test
patients split into ``control/``, ``weight/`` and ``negative/`` (see ``privacy.controls``).

``privacy_eval`` evaluates every release with the AUDITOR (``privacy.pso.evaluate_release``):
the positive control (training images + light noise: must score a high risk), the negative
control (held-out real images of other patients: risk CI must include 0) and every release
of the ``generate`` stages once they exist. Artifacts: ``results.csv`` / ``results.json``
(one row per release) and ``nn_distances.npz`` (pixel NN distances per release and of the
held-out reference, for the figure).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..data.imageset import ImageSet
from ..io import atomic_path, atomic_write_json, to_jsonable
from ..pipeline import STAGES, Pipeline, StageContext, stage
from ..privacy.controls import (control_population, filelist_populations, negative_control_release,
                                positive_control_release)
from ..privacy.pso import PRIVACY_DEFAULTS, EmbeddingCache, evaluate_release, privacy_config
from ..privacy.reid_train import derive_seed

__all__ = ["RELEASES", "CONTROL_RELEASES", "available_releases", "filter_tradeoff", "load_populations", "load_release_any",
           "load_privacy", "privacy_table", "populations_info", "privacy_config", "PRIVACY_DEFAULTS"]

# Row name → display name. Controls first, then the generated releases (stages/generate.py).
CONTROL_RELEASES = {"positive_control": "positive control (noised training images)",
                    "negative_control": "negative control (held-out real patients)"}
RELEASES = {"edm_class": "EDM class-conditional", "diadm_raw": "DiADM raw (no filter)",
            "diadm_filter": "DiADM + filter", "diadm_filter_2nd": "DiADM + filter (2nd best)"}


# ------------------------------------------------------------------ control population
@stage("control_population", keys=("seed", "data", "privacy.n_control_patients", "privacy.n_weight_patients"),
       deps=("data",), version=1)
def control_population_stage(ctx: StageContext) -> None:
    """Fresh patients never trained on: ``control/`` and ``weight/`` (and ``negative/`` for file lists)."""
    from ..data.build import validate_data_cfg
    from .data import load_splits

    data_cfg = validate_data_cfg(ctx.params["data"])
    seed = int(ctx.params["seed"])
    splits = load_splits(ctx.pipeline)
    n_train = splits["train"].n_patients
    if data_cfg["source"] == "phantom":
        n_ctrl = ctx.params["privacy.n_control_patients"] or n_train
        n_wgt = ctx.params["privacy.n_weight_patients"] or n_train
        pops = {"control": control_population(data_cfg, n_ctrl, seed, "control", "ctrl", progress=True),
                "weight": control_population(data_cfg, n_wgt, seed, "weight", "wt", progress=True)}
        note = (f"fresh PhantomCXR populations (own seed streams): control {n_ctrl} patients "
                f"(= training patients: {n_train}), weight {n_wgt}; negative control = the test split")
    else:
        pops = filelist_populations(splits["val"], splits["test"], seed)
        note = ("file-list data: val + test patients split into control / weight / negative-control parts "
                "(smaller than the training population; the attack plays on an equally sized subsample "
                "of training patients)")
    for name, imageset in pops.items():
        imageset.save(ctx.out / name)
    atomic_write_json(ctx.out / "populations.json", {
        "source": data_cfg["source"], "note": note, "n_train_patients": n_train,
        **{f"n_{k}_patients": int(v.n_patients) for k, v in pops.items()},
        **{f"n_{k}_images": len(v) for k, v in pops.items()}})


def load_populations(pipe: Pipeline) -> dict[str, ImageSet]:
    """``{"control", "weight"[, "negative"]}`` ImageSets (computed on first use, then cached)."""
    path = pipe.get("control_population")
    return {p.name: ImageSet.load(p) for p in sorted(path.iterdir()) if p.is_dir()}


def populations_info(pipe: Pipeline) -> dict:
    """``populations.json`` of the control stage: sizes and how the populations were drawn."""
    return json.loads((pipe.get("control_population") / "populations.json").read_text())


# ------------------------------------------------------------------ releases
def _generate_module():
    from importlib import import_module

    try:
        generate = import_module(f"{__package__}.generate")
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.generate":
            raise
        return None
    return generate if hasattr(generate, "load_release") else None


def available_releases() -> list[str]:
    """Names of the generated releases this checkout can evaluate: ``generate.RELEASES`` (the
    four of ``RELEASES`` in the paper's order), empty until ``stages/generate.py`` exists."""
    gen = _generate_module()
    if gen is None:
        return []
    names = list(getattr(gen, "RELEASES", RELEASES))
    return [n for n in RELEASES if n in names] + [n for n in names if n not in RELEASES]


def _generate_deps() -> tuple[str, ...]:
    """The stages that write the releases (``generate.RELEASE_STAGES``; else every stage the
    generate module registers), so a new release invalidates the evaluation."""
    gen = _generate_module()
    if gen is None:
        return ()
    if hasattr(gen, "RELEASE_STAGES"):
        return tuple(sorted(set(gen.RELEASE_STAGES.values())))
    return tuple(sorted(n for n, st in STAGES.items() if st.fn.__module__ == gen.__name__))


def load_release_any(pipe: Pipeline, name: str) -> tuple[ImageSet, np.ndarray | None]:
    """A release by row name: the two controls, or a generated one (``generate.load_release``)."""
    from .data import load_splits

    params = privacy_config(pipe.cfg)
    splits = load_splits(pipe)
    if name == "positive_control":
        return positive_control_release(splits["train"], params["positive_sigma"],
                                        derive_seed(int(pipe.cfg["seed"]), "privacy", "positive"))
    if name == "negative_control":
        pops = load_populations(pipe)
        return negative_control_release(pops.get("negative", splits["test"]))
    gen = _generate_module()
    if gen is None or name not in available_releases():
        known = list(CONTROL_RELEASES) + available_releases()
        raise KeyError(f"unknown or unavailable release {name!r}; available: {known}")
    release, source_index = gen.load_release(pipe, name)
    return release, np.asarray(source_index)


# ------------------------------------------------------------------ evaluation
@stage("privacy_eval", keys=("seed", "privacy"),
       deps=("data", "reid_auditor", "control_population", *_generate_deps()), version=2)  # 2: calibrated vs-all
def privacy_eval_stage(ctx: StageContext) -> None:
    """Audit + singling-out attack of every release (controls first) → results table."""
    from tqdm.auto import tqdm

    from .data import load_splits
    from .reid import load_verifier

    pipe = ctx.pipeline
    params = privacy_config(pipe.cfg)
    splits, pops = load_splits(pipe), load_populations(pipe)
    auditor = load_verifier(pipe, "auditor")   # the AUDITOR only — never the defender
    embed = EmbeddingCache(auditor, params["batch_size"])
    train, reference = splits["train"], splits["test"]
    rows, arrays = [], {}
    names = list(CONTROL_RELEASES) + available_releases()
    for name in tqdm(names, desc="privacy_eval", unit="release"):
        release, source_index = load_release_any(pipe, name)
        row = evaluate_release(release, source_index, train, pops["control"], auditor, pipe.cfg,
                               heldout=pops["weight"], reference=reference, embed=embed, name=name)
        arrays[name] = row.pop("nn_distances")
        arrays["reference"] = row.pop("nn_reference")
        row["label"] = {**CONTROL_RELEASES, **RELEASES}.get(name, name)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("release")
    with atomic_path(ctx.out / "results.csv") as tmp:
        df.to_csv(tmp)
    atomic_write_json(ctx.out / "results.json", to_jsonable({"rows": rows, "privacy": params}))
    with atomic_path(ctx.out / "nn_distances.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items() if v is not None})


def load_privacy(pipe: Pipeline) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(results table indexed by release, {release or "reference": NN distances})."""
    path = pipe.get("privacy_eval")
    rows = json.loads((path / "results.json").read_text())["rows"]
    df = pd.DataFrame(rows).set_index("release")
    for col in df.columns:                      # NaN was stored as null: back to float columns
        if df[col].dtype == object and col not in ("label", "weight_source", "pso_kind"):
            converted = pd.to_numeric(df[col], errors="coerce")
            if converted.notna().sum() == df[col].notna().sum():
                df[col] = converted
    with np.load(path / "nn_distances.npz", allow_pickle=False) as z:
        nn = {k: z[k] for k in z.files}
    return df, nn


def filter_tradeoff(pipe: Pipeline, thresholds=(0.9, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)) -> pd.DataFrame:
    """The privacy filter's veto threshold vs what the AUDITOR still finds (``audit.veto_tradeoff``),
    on the raw DiADM release (each source's first candidate, before any veto). Reads the defender
    too: this is an analysis of the filter's operating point, not part of the audit, which never
    uses the defender. Indexed by threshold; the profile's own threshold is marked."""
    from ..privacy.audit import veto_tradeoff
    from .data import load_splits
    from .generate import generate_config
    from .reid import load_verifier

    release, source_index = load_release_any(pipe, "diadm_raw")
    train = load_splits(pipe)["train"].subset(np.asarray(source_index))
    probs = {}
    for role in ("defender", "auditor"):
        v = load_verifier(pipe, role)
        probs[role] = v.probability(v.score_pairs(v.embed(release), v.embed(train))).numpy()
    used = float(generate_config(pipe.cfg)["filter"]["threshold"])
    rows = veto_tradeoff(probs["defender"], probs["auditor"], sorted({*map(float, thresholds), used}, reverse=True),
                         auditor_threshold=float(privacy_config(pipe.cfg)["audit_threshold"]))
    df = pd.DataFrame(rows).set_index("threshold")
    df["profile's threshold"] = [t == used for t in df.index]
    return df


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


def privacy_table(df: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """The notebook's table: one row per release (display name), rates with 95 % CIs as text.

    ``kind``: the predicate kind of the attack columns (default: the run's primary kind).
    """
    kind = kind or str(df["pso_kind"].iloc[0])
    rows = {}
    for _, r in df.iterrows():
        f = lambda c: r.get(c, np.nan)  # noqa: E731
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
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "release"
    return out
