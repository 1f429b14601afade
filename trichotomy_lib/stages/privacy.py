"""Stages ``control_population`` and ``privacy_eval``: can anyone single out a patient? (DESIGN step 7)

``control_population`` draws the patients the attack is compared against — never trained on,
same distribution as the training split: for PhantomCXR two fresh populations from their own
seed streams, ``control/`` (as many patients as the training split; the control rate) and
``weight/`` (threshold calibration and predicate weights); for file-list data the val + test
patients split into ``control/``, ``weight/`` and ``negative/`` (``privacy.controls``).

``privacy_eval`` evaluates every release of ``releases.RELEASES`` and both controls with the
AUDITOR only (``privacy.pso.evaluate_release``). Artifacts: ``results.json`` (one row per
release) and ``nn_distances.npz`` (pixel NN distances per release and of the held-out
reference, for the figure).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import seeds
from ..config import register_section
from ..data.imageset import ImageSet
from ..io import atomic_path, atomic_write_json, to_jsonable
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.controls import (control_population, filelist_populations, negative_control_release,
                                positive_control_release)
from ..privacy.audit import FeatureCache, pixel_features
from ..privacy.pso import EmbeddingCache, evaluate_release, privacy_config
from ..releases import CONTROLS, RELEASES, label, release_stages
from .data import load_splits
from .encoder import load_encoder
from .generate import load_release
from .reid import load_verifier

register_section("privacy")(privacy_config)


@stage("control_population", keys=("seed", "data", "privacy.n_control_patients", "privacy.n_weight_patients"),
       deps=("data",), version=2)
def control_population_stage(ctx: StageContext) -> None:
    """Fresh patients never trained on: ``control/`` and ``weight/`` (and ``negative/`` for file lists)."""
    data_cfg = ctx.config["data"]
    seed = int(ctx.config["seed"])
    splits = load_splits(ctx.pipeline)
    n_train = splits["train"].n_patients
    if data_cfg["source"] == "phantom":
        n_ctrl = ctx.config["privacy.n_control_patients"] or n_train
        n_wgt = ctx.config["privacy.n_weight_patients"] or n_train
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


def load_any_release(pipe: Pipeline, name: str) -> tuple[ImageSet, np.ndarray | None]:
    """A release by row name: one of the two controls, or a generated release."""
    splits = load_splits(pipe)
    if name == "positive_control":
        return positive_control_release(splits["train"], pipe.cfg["privacy"]["positive_sigma"],
                                        seeds.derive(int(pipe.cfg["seed"]), "privacy", "positive"))
    if name == "negative_control":
        return negative_control_release(load_populations(pipe).get("negative", splits["test"]))
    if name not in RELEASES:
        raise KeyError(f"unknown release {name!r}; known: {[*CONTROLS, *RELEASES]}")
    release, source_index = load_release(pipe, name)
    return release, np.asarray(source_index)


def attacker_spaces(pipe: Pipeline, names) -> dict:
    """``{name: ImageSet -> features}`` of the attackers beyond the auditor (``privacy.attackers``)."""
    params = pipe.cfg["privacy"]
    spaces = {}
    for name in names:
        if name == "pixels":
            spaces[name] = FeatureCache(lambda s: pixel_features(s, params["nn_max_size"]))
        elif name == "encoder":
            encoder = load_encoder(pipe)
            spaces[name] = FeatureCache(lambda s, e=encoder: e.embed(s.tensor(), batch_size=params["batch_size"]))
        elif name == "defender":
            defender = load_verifier(pipe, "defender")
            spaces[name] = FeatureCache(lambda s, d=defender: d.embed(s, batch_size=params["batch_size"]))
        else:
            raise ValueError(f"unknown attacker space {name!r}")
    return spaces


@stage("privacy_eval", keys=("seed", "privacy"),
       deps=("data", "encoder", "reid_defender", "reid_auditor", "control_population", *release_stages()),
       version=4)
def privacy_eval_stage(ctx: StageContext) -> None:
    """Audit + singling-out attack of every release (controls first) → results table."""
    pipe = ctx.pipeline
    params = ctx.config["privacy"]
    splits, pops = load_splits(pipe), load_populations(pipe)
    auditor = load_verifier(pipe, "auditor")   # the AUDITOR only — never the defender
    embed = EmbeddingCache(auditor, params["batch_size"])
    spaces = attacker_spaces(pipe, params["attackers"])
    train, reference = splits["train"], splits["test"]
    rows, arrays = [], {}
    for name in tqdm([*CONTROLS, *RELEASES], desc="privacy_eval", unit="release"):
        release, source_index = load_any_release(pipe, name)
        row = evaluate_release(release, source_index, train, pops["control"], auditor, ctx.config.to_dict(),
                               heldout=pops["weight"], reference=reference, embed=embed, name=name, spaces=spaces)
        arrays[name] = row.pop("nn_distances")
        arrays["reference"] = row.pop("nn_reference")
        row["label"] = label(name)
        rows.append(row)
    atomic_write_json(ctx.out / "results.json", to_jsonable({"rows": rows, "privacy": params}))
    with atomic_path(ctx.out / "nn_distances.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items() if v is not None})


def load_privacy(pipe: Pipeline) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(results table indexed by release, {release or "reference": NN distances})."""
    path = pipe.get("privacy_eval")
    rows = json.loads((path / "results.json").read_text())["rows"]
    df = pd.DataFrame(rows).set_index("release")
    for col in df.columns:                      # NaN was stored as null: back to float columns
        if df[col].dtype == object and col not in ("label", "weight_source", "pso_kind", "strongest_attacker"):
            converted = pd.to_numeric(df[col], errors="coerce")
            if converted.notna().sum() == df[col].notna().sum():
                df[col] = converted
    with np.load(path / "nn_distances.npz", allow_pickle=False) as z:
        nn = {k: z[k] for k in z.files}
    return df, nn
