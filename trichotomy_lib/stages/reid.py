"""Stages ``reid_defender`` and ``reid_auditor``: two independent re-identification verifiers.

Who trains on which patients is ``privacy.roles``: the defender on the training patients (and
its own fresh ones), the auditor only on its own population (stage ``control_population``). Artifacts per role: ``model.safetensors``
+ ``verifier.json`` (hyper-parameters, role, seed, training history), ``train_pairs.npz``
(the image names of every training pair + label), ``patients.npy`` (its training patients).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import ConfigError, register_section, section
from ..device import PRECISIONS
from ..io import atomic_path
from ..jobs import run_jobs
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.reid_model import Verifier
from ..privacy.reid_train import (LR_SCHEDULES, NEGATIVES, REID_DEFAULTS, SELECT, TRAIN_KEYS, check_choice, check_retrieval_weight,
                                  sample_pairs, train_verifier)
from ..privacy.roles import ROLES, auditor_split, check_role, defender_train_set, role_seed, val_pairs_seed
from .. import seeds
from .data import load_splits
from .populations import load_populations

_KEYS = ("seed", "data", *(f"reid.{k}" for k in TRAIN_KEYS if k != "auditor_patients"))
_AUDITOR_KEYS = (*_KEYS, "reid.auditor")

# ``reid.auditor``: the auditor's recipe where it differs from the defender's (e.g. {width: 32}).
# Who trains on which patients is not a recipe setting, so those keys stay out of it.
AUDITOR_OVERRIDE_KEYS: tuple[str, ...] = tuple(k for k in TRAIN_KEYS if k not in ("auditor_patients", "extra_patients"))


# The recipe values a profile can get wrong, each with the check that names it (``reid.<key>``).
_RECIPE_CHECKS = {"precision": lambda v: check_choice("precision", v, tuple(PRECISIONS)),
                  "lr_schedule": lambda v: check_choice("lr_schedule", v, LR_SCHEDULES),
                  "select": lambda v: check_choice("select", v, SELECT),
                  "negatives": lambda v: check_choice("negatives", v, NEGATIVES),
                  "retrieval_loss": check_retrieval_weight}


def _check_recipe(params: dict, where: str) -> None:
    for key, check in _RECIPE_CHECKS.items():
        if key in params:
            try:
                check(params[key])
            except ValueError as err:
                raise ConfigError(str(err).replace(f"reid.{key}", f"{where}{key}")) from None


@register_section("reid")
def reid_config(cfg: dict) -> dict:
    """The ``reid`` section over ``REID_DEFAULTS`` plus ``auditor: {}`` (unknown keys, an unknown
    precision, learning-rate schedule or epoch selection and a negative retrieval-loss weight rejected, naming them; ``reid.auditor`` may
    hold only recipe keys, ``AUDITOR_OVERRIDE_KEYS``)."""
    merged = section(cfg, "reid", {**REID_DEFAULTS, "auditor": {}})
    own = merged["auditor"]
    if not isinstance(own, dict):
        raise ConfigError(f"reid.auditor must be a mapping of the auditor's own settings, got {own!r}")
    section({"reid.auditor": own}, "reid.auditor", dict.fromkeys(AUDITOR_OVERRIDE_KEYS))  # names unknown keys
    _check_recipe(merged, "reid.")
    _check_recipe(own, "reid.auditor.")
    return merged


def role_params(reid, role: str) -> dict:
    """The training parameters of ``role``: the ``reid`` section (a dict or a stage's view of it)
    without ``auditor``, and for the auditor with ``reid.auditor`` on top."""
    check_role(role)
    reid = reid.to_dict() if hasattr(reid, "to_dict") else dict(reid)
    own = reid.pop("auditor", None) or {}
    return {**reid, **own} if role == "auditor" else reid


def _save_npy(path, array) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def role_data(pipe, cfg, role: str):
    """(train, val, val_pairs) of a role: who it trains on and the pairs that choose its epoch.

    ``pipe``: the pipeline (or a stage's view of it); ``cfg``: the resolved config (or the
    stage's view: ``seed``, ``data``, ``reid.extra_patients``)."""
    check_role(role)
    seed = int(cfg["seed"])
    splits = load_splits(pipe)
    for name in ("train", "val"):
        if name not in splits:
            raise ValueError(f"{pipe.get('data')}: the data stage wrote no {name!r} split")
    if role == "defender":
        train = defender_train_set(splits["train"], seed, cfg["data"], cfg["reid"]["extra_patients"])
        val = splits["val"]
        return train, val, sample_pairs(val.patient_ids, val_pairs_seed(seed), split="val")
    # a third party: its own patients for training and for choosing the epoch
    train, val = auditor_split(load_populations(pipe)["auditor"], seed)
    return train, val, sample_pairs(val.patient_ids, seeds.derive(seed, "reid", "auditor", "val_pairs"), split="auditor val")


def fit_role(train, val, val_pairs, params: dict, role: str, own_seed: int, out, desc: str,
             progress: bool = True) -> None:
    """Train one verifier of ``role`` with seed ``own_seed`` into ``out`` (a job of ``jobs.run_jobs``)."""
    pairs = sample_pairs(train.patient_ids, seeds.derive(own_seed, "pairs"), params["max_pos_per_patient"],
                         split=f"train ({role})")
    model, history = train_verifier(train, val, params, own_seed, pairs=pairs, val_pairs=val_pairs,
                                    checkpoint_dir=out, progress=progress, desc=desc)
    # the exact pairs trained on, by image name (to check defender/auditor independence)
    with atomic_path(out / "train_pairs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, a=train.names[pairs.a].astype(str), b=train.names[pairs.b].astype(str), label=pairs.label)
    _save_npy(out / "patients.npy", np.unique(train.patient_ids).astype(str))
    model.save(out, extra={"role": role, "seed": own_seed, "n_train_images": len(train),
                           "n_train_patients": int(train.n_patients), "history": history})


def _train_role(ctx: StageContext, role: str) -> None:
    fit_role(*role_data(ctx.pipeline, ctx.config, role), role_params(ctx.config["reid"], role), role,
             role_seed(int(ctx.config["seed"]), role), ctx.out, desc=f"reid_{role}")


@stage("reid_defender", keys=_KEYS, deps=("data",), version=4)
def reid_defender_stage(ctx: StageContext) -> None:
    """Train the defender verifier (the training patients and its own fresh ones)."""
    _train_role(ctx, "defender")


@stage("reid_auditor", keys=_AUDITOR_KEYS, deps=("data", "control_population"), version=4)
def reid_auditor_stage(ctx: StageContext) -> None:
    """Train the auditor verifier on its own population only (no training, control or weight patient)."""
    _train_role(ctx, "auditor")


def _train_replicas(ctx: StageContext, indices) -> None:
    """Replicas ``indices`` of the defender (its recipe, seed ``seeds.derive(seed, "reid", "defender",
    "replica", i)``) into ``ctx.out / replica_<i>``; finished ones are kept, so an interrupted stage resumes."""
    seed = int(ctx.config["seed"])
    todo = [i for i in indices if not (ctx.out / f"replica_{i}" / "verifier.json").exists()]
    for i in todo:
        (ctx.out / f"replica_{i}").mkdir(parents=True, exist_ok=True)
    data = role_data(ctx.pipeline, ctx.config, "defender") if todo else ()
    run_jobs(fit_role, [(*data, role_params(ctx.config["reid"], "defender"), "defender",
                         seeds.derive(seed, "reid", "defender", "replica", i), ctx.out / f"replica_{i}",
                         f"reid_defender replica {i}") for i in todo], desc="defender replicas")


def _replica_index(path: Path) -> int:
    return int(path.name.split("_")[1])  # replica_<i>


def replica_dirs(*paths) -> list:
    """The finished ``replica_<i>`` directories under ``paths``, by i (replica 1 first; a replica
    found in two places is taken from the first)."""
    found = {}
    for path in paths:
        for p in Path(path).glob("replica_*"):
            if (p / "verifier.json").exists():
                found.setdefault(_replica_index(p), p)
    return [found[i] for i in sorted(found)]


@stage("reid_defender_committee", keys=(*_KEYS, "generate.filter.defenders"), deps=("data",), version=1)
def reid_defender_committee_stage(ctx: StageContext) -> None:
    """The defender's recipe retrained with other seeds for the filter's committee veto: replicas
    1 … D − 1 (``generate.filter.defenders`` = D; none for the single defender)."""
    _train_replicas(ctx, range(1, int(ctx.config["generate.filter.defenders"])))


@stage("reid_defender_replicas", keys=(*_KEYS, "privacy.reliability_seeds"), deps=("data", "reid_defender_committee"),
       version=2)
def reid_defender_replicas_stage(ctx: StageContext) -> None:
    """The replicas of the filter's seed-agreement test, 1 … R − 1 (``privacy.reliability_seeds`` = R):
    those the committee already holds are used from there, the rest trained here."""
    have = {_replica_index(p) for p in replica_dirs(ctx.inputs["reid_defender_committee"])}
    _train_replicas(ctx, [i for i in range(1, int(ctx.config["privacy.reliability_seeds"])) if i not in have])


def load_committee_replicas(pipe: Pipeline) -> list[Verifier]:
    """The filter committee's replicas, 1 … D − 1 (empty for a single defender)."""
    return [Verifier.load(p) for p in replica_dirs(pipe.get("reid_defender_committee"))]


def load_defender_replicas(pipe: Pipeline) -> list[Verifier]:
    """The seed-agreement test's replicas, 1 … R − 1, replica 1 first (empty when
    ``privacy.reliability_seeds`` <= 1)."""
    n = int(pipe.cfg["privacy"]["reliability_seeds"])
    dirs = replica_dirs(pipe.get("reid_defender_replicas"), pipe.get("reid_defender_committee"))
    return [Verifier.load(p) for p in dirs if _replica_index(p) < n]


def load_verifier(pipe: Pipeline, role: str) -> Verifier:
    """The trained ``"defender"`` or ``"auditor"`` (trained on first use, then cached)."""
    check_role(role)
    return Verifier.load(pipe.get(f"reid_{role}"))


def training_info(pipe: Pipeline, role: str) -> dict:
    """``verifier.json`` of a role: hyper-parameters, seed, sizes, per-epoch history."""
    check_role(role)
    return json.loads((pipe.get(f"reid_{role}") / "verifier.json").read_text())


def training_pairs(pipe: Pipeline, role: str) -> dict:
    """``{"a", "b", "label", "patients"}``: the image names of every training pair and the patients."""
    check_role(role)
    path = pipe.get(f"reid_{role}")
    with np.load(path / "train_pairs.npz", allow_pickle=False) as z:
        out = {k: z[k] for k in ("a", "b", "label")}
    out["patients"] = np.load(path / "patients.npy", allow_pickle=False)
    return out


__all__ = ["ROLES", "reid_config", "role_params", "load_verifier", "training_info", "training_pairs"]
