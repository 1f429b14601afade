"""Stage ``privacy_eval``: can anyone single out a patient? (DESIGN step 7)

``privacy_eval`` evaluates every release of ``releases.RELEASES`` and both controls with the
AUDITOR only (``privacy.pso.evaluate_release``). Artifacts: ``results.json`` (one row per
release) and ``nn_distances.npz`` (pixel NN distances per release and of the held-out
reference, for the figure). ``privacy_weight_sweep`` plays the same games at the other
predicate weights of ``privacy.weight_sweep``; ``privacy_controls`` plays them on graded leaks
and negative controls; ``filter_reliability`` tests the filter's veto itself.
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
from ..privacy.controls import negative_control_release, positive_control_release
from ..privacy.leaks import graded_leaks
from ..privacy.reliability import planted_candidates, veto_reliability
from ..privacy.attack import attack_at_weights, attack_release, evaluate_release
from ..privacy.audit import EmbeddingCache, FeatureCache, pixel_features
from ..privacy.pso import privacy_config
from ..releases import CONTROLS, RELEASES, label, release_stages
from .data import load_splits
from .encoder import load_attacker_encoder, load_encoder
from .generate import committee_veto, copy_veto, defender_veto, load_release
from .populations import load_populations
from .reid import load_defender_replicas, load_verifier

register_section("privacy")(privacy_config)


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
        elif name in ("encoder", "public_encoder"):
            encoder = load_encoder(pipe) if name == "encoder" else load_attacker_encoder(pipe)
            spaces[name] = FeatureCache(lambda s, e=encoder: e.embed(s.tensor(), batch_size=params["batch_size"]))
        elif name == "defender":
            defender = load_verifier(pipe, "defender")
            spaces[name] = FeatureCache(lambda s, d=defender: d.embed(s, batch_size=params["batch_size"]))
        else:
            raise ValueError(f"unknown attacker space {name!r}")
    return spaces


def _game_pieces(pipe: Pipeline) -> tuple[dict, dict, object, EmbeddingCache, dict]:
    """What every singling-out game of the privacy stages plays with: (splits, privacy populations,
    the AUDITOR — never the defender —, its embedding cache, the other attackers' feature caches)."""
    params = pipe.cfg["privacy"]
    auditor = load_verifier(pipe, "auditor")
    return (load_splits(pipe), load_populations(pipe), auditor, EmbeddingCache(auditor, params["batch_size"]),
            attacker_spaces(pipe, params["attackers"]))


@stage("privacy_eval", keys=("seed", "privacy"),
       deps=("data", "encoder", "attacker_encoder", "reid_defender", "reid_auditor", "control_population",
             *release_stages()), version=6)
def privacy_eval_stage(ctx: StageContext) -> None:
    """Audit + singling-out attack of every release (controls first) → results table."""
    pipe = ctx.pipeline
    params = ctx.config["privacy"]
    splits, pops, auditor, embed, spaces = _game_pieces(pipe)
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


@stage("privacy_weight_sweep", keys=("seed", "privacy"),
       deps=("data", "encoder", "attacker_encoder", "reid_defender", "reid_auditor", "control_population",
             *release_stages()), version=1)
def privacy_weight_sweep_stage(ctx: StageContext) -> None:
    """Every attacker on every release again at each weight factor of ``privacy.weight_sweep``.

    The target weight w = weight_factor / n sets how many patients a predicate may match by
    chance; the attacker picks it, so the verdict is read at several. Each factor's game is
    ``attack.attack_at_weights``: only ``privacy.weight_factor`` changes (same predicates, populations,
    calibration halves and bootstrap seeds as the headline). The headline's own factor, when listed,
    replays ``privacy_eval``'s game exactly (notebook 06 checks that it reads the same)."""
    pipe = ctx.pipeline
    cfg = ctx.config.to_dict()
    splits, pops, auditor, embed, spaces = _game_pieces(pipe)
    rows = []
    for name in tqdm([*CONTROLS, *RELEASES], desc="privacy weight sweep", unit="release"):
        release, source_index = load_any_release(pipe, name)
        games = attack_at_weights(release, source_index, splits["train"], pops["control"], auditor, cfg,
                                  privacy_config(cfg)["weight_sweep"], heldout=pops["weight"], embed=embed, name=name,
                                  spaces=spaces)
        rows += [{**game, "label": label(name)} for game in games]
    atomic_write_json(ctx.out / "sweep.json", to_jsonable({"rows": rows}))


@stage("privacy_controls", keys=("seed", "data", "privacy"),
       deps=("data", "encoder", "attacker_encoder", "reid_defender", "reid_auditor", "control_population"), version=3)
def privacy_controls_stage(ctx: StageContext) -> None:
    """Every attacker on graded leaks of the training data and on the negative controls."""
    pipe = ctx.pipeline
    splits, pops, auditor, embed, spaces = _game_pieces(pipe)
    heldout = pops.get("negative", splits["test"])
    rows = []
    cfg = ctx.config.to_dict()
    for leak in tqdm(graded_leaks(splits["train"], heldout, ctx.config["data"], int(ctx.config["seed"])),
                     desc="privacy controls", unit="release"):
        row = attack_release(leak.release, leak.source_index, splits["train"], pops["control"], auditor, cfg,
                             heldout=pops["weight"], embed=embed, name=leak.name, spaces=spaces)
        rows.append({"family": leak.family, "parameter": leak.parameter, **row})
    atomic_write_json(ctx.out / "controls.json", to_jsonable({"rows": rows}))


@stage("filter_reliability", keys=("seed", "generate.filter", "privacy.reliability_seeds"),
       deps=("data", "encoder", "reid_defender", "reid_defender_committee", "reid_defender_replicas",
             "control_population"), version=2)
def filter_reliability_stage(ctx: StageContext) -> None:
    """Sensitivity on planted near-duplicates, specificity on unseen patients, agreement across defender seeds."""
    pipe = ctx.pipeline
    splits = load_splits(pipe)
    train = splits["train"]
    unseen = load_populations(pipe).get("negative", splits["test"])
    verifiers = {"filter's defender": load_verifier(pipe, "defender")}
    verifiers.update({f"seed {i + 2}": v for i, v in enumerate(load_defender_replicas(pipe))})
    defenders = {name: defender_veto(pipe, v, train) for name, v in verifiers.items()}
    fn, threshold, members = committee_veto(pipe, train)
    copy, identity = copy_veto(pipe, train, identity=False), copy_veto(pipe, train, near_copy=False)
    table = veto_reliability(planted_candidates(train, unseen, int(ctx.config["seed"])), defenders,
                             None if copy is None else copy.ratio, (fn, threshold) if len(members) > 1 else None,
                             None if identity is None else identity.ratio)
    atomic_write_json(ctx.out / "reliability.json", to_jsonable({
        "rows": table.reset_index().to_dict(orient="records"),
        "thresholds": {name: t for name, (_, t) in defenders.items()}}))


def load_filter_reliability(pipe: Pipeline) -> tuple[pd.DataFrame, dict]:
    """(the reliability table, {defender: veto threshold})."""
    data = json.loads((pipe.get("filter_reliability") / "reliability.json").read_text())
    return pd.DataFrame(data["rows"]).set_index("candidate"), data["thresholds"]


def load_weight_sweep(pipe: Pipeline) -> pd.DataFrame:
    """One row per (release, weight factor) of ``privacy.weight_sweep``, every attacker's fields
    (empty when the sweep is switched off)."""
    rows = json.loads((pipe.get("privacy_weight_sweep") / "sweep.json").read_text())["rows"]
    return pd.DataFrame(rows)


def load_privacy_controls(pipe: Pipeline) -> pd.DataFrame:
    """One row per control release (graded leaks, then negative controls), every attacker's fields."""
    rows = json.loads((pipe.get("privacy_controls") / "controls.json").read_text())["rows"]
    return pd.DataFrame(rows).set_index("release")


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
