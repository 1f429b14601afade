"""Stages ``reid_defender`` and ``reid_auditor``: two independent re-identification verifiers.

DESIGN step 2. The training patients are split into two disjoint, seeded halves; the
**defender** (used by the privacy filter) is trained on pairs of the first half, the
**auditor** (used only to evaluate releases) on pairs of the second, each with its own seed.
So the two share no training pair, no training image and no training patient: the auditor's
judgement of a filtered release is not the defender's judgement repeated. Both select their
best epoch on pairs of the (shared, patient-disjoint) validation split.

``reid.extra_patients`` (PhantomCXR only) adds that many fresh patients to each verifier's
training set, from a seed stream of its own (so the two roles still share no patient, and
neither shares one with any split or privacy population). It stands for what Packhäuser et
al. had and a small data holder lacks: a large public re-identification dataset of *other*
patients. Verification is a property of patients in general, not of the training patients,
and it is data-hungry: on the default profile one verifier trained on 250 patients reaches
a test AUROC of ~0.92, on 500 ~0.97.

Artifacts per role: ``model.safetensors`` + ``verifier.json`` (hyper-parameters, role, seed,
training history), ``train_pairs.npz`` (the image names of every training pair + label),
``patients.npy`` (the training patients of this role).
"""

from __future__ import annotations

import numpy as np

from ..config import section
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.reid_eval import Evaluation, evaluate_pixels, evaluate_verifier
from ..privacy.reid_model import Verifier
from ..privacy.reid_train import REID_DEFAULTS, TRAIN_KEYS, derive_seed, sample_pairs, split_patients, train_verifier

ROLES = ("defender", "auditor")
_KEYS = ("seed", "data", *(f"reid.{k}" for k in TRAIN_KEYS))


def reid_config(cfg: dict) -> dict:
    """The ``reid`` section over ``REID_DEFAULTS`` (unknown keys rejected, naming them)."""
    return section(cfg, "reid", REID_DEFAULTS)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"verifier role must be one of {ROLES}, got {role!r}")


def role_seed(seed: int, role: str) -> int:
    """The seed of one verifier (init, pairs, shuffles, augmentation)."""
    _check_role(role)
    return derive_seed(seed, "reid", role)


def val_pairs_seed(seed: int) -> int:
    return derive_seed(seed, "reid", "val_pairs")


def test_pairs_seed(seed: int) -> int:
    return derive_seed(seed, "reid", "test_pairs")


def role_train_set(train, seed: int, role: str, data_cfg: dict | None = None, extra_patients: int = 0):
    """The training images of ``role``: the patients of its half of the training split, plus
    ``extra_patients`` fresh PhantomCXR patients of the role's own seed stream (``data_cfg``: the
    profile's ``data`` section, which must be ``source: phantom`` then)."""
    from ..data.imageset import ImageSet
    from ..privacy.controls import control_population

    _check_role(role)
    halves = split_patients(train.patient_ids, derive_seed(seed, "reid", "patient_halves"))
    own = train.subset(halves[ROLES.index(role)])
    if not extra_patients:
        return own
    if not (isinstance(extra_patients, int) and extra_patients > 0):
        raise ValueError(f"reid.extra_patients must be an integer >= 0, got {extra_patients!r}")
    if (data_cfg or {}).get("source", "phantom") != "phantom":
        raise ValueError("reid.extra_patients generates PhantomCXR patients; with data.source "
                         f"{data_cfg.get('source')!r} set it to 0 (or train on your own extra patients)")
    extra = control_population(data_cfg, extra_patients, seed, stream=f"reid-{role}", prefix=f"reid-{role}",
                               train_like=False)
    return ImageSet.concat([own, extra])


def _train_role(ctx: StageContext, role: str) -> None:
    from ..io import atomic_path
    from .data import load_splits

    params = reid_config({"reid": {k.split(".", 1)[1]: v for k, v in ctx.params.items()
                                   if k.startswith("reid.") and v is not None}})
    seed = int(ctx.params["seed"])
    splits = load_splits(ctx.pipeline)
    for name in ("train", "val"):
        if name not in splits:
            raise ValueError(f"{ctx.inputs['data']}: the data stage wrote no {name!r} split")
    train = role_train_set(splits["train"], seed, role, ctx.params["data"], params["extra_patients"])
    val = splits["val"]
    val_pairs = sample_pairs(val.patient_ids, val_pairs_seed(seed), split="val")
    pairs = sample_pairs(train.patient_ids, derive_seed(role_seed(seed, role), "pairs"),
                         params["max_pos_per_patient"], split=f"train ({role} half)")
    model, history = train_verifier(train, val, params, role_seed(seed, role), pairs=pairs, val_pairs=val_pairs,
                                    checkpoint_dir=ctx.out, desc=f"reid_{role}")
    # the exact pairs trained on, by image name (to check defender/auditor independence)
    with atomic_path(ctx.out / "train_pairs.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, a=train.names[pairs.a].astype(str), b=train.names[pairs.b].astype(str), label=pairs.label)
    with atomic_path(ctx.out / "patients.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.unique(train.patient_ids).astype(str), allow_pickle=False)
    model.save(ctx.out, extra={"role": role, "seed": role_seed(seed, role), "n_train_images": len(train),
                               "n_train_patients": int(train.n_patients), "history": history})


@stage("reid_defender", keys=_KEYS, deps=("data",), version=2)  # 2: extra_patients
def reid_defender_stage(ctx: StageContext) -> None:
    """Train the defender verifier (first half of the training patients)."""
    _train_role(ctx, "defender")


@stage("reid_auditor", keys=_KEYS, deps=("data",), version=2)
def reid_auditor_stage(ctx: StageContext) -> None:
    """Train the auditor verifier (second half of the training patients, its own seed)."""
    _train_role(ctx, "auditor")


def load_verifier(pipe: Pipeline, role: str) -> Verifier:
    """The trained ``"defender"`` or ``"auditor"`` (trained on first use, then cached)."""
    _check_role(role)
    return Verifier.load(pipe.get(f"reid_{role}"))


def training_info(pipe: Pipeline, role: str) -> dict:
    """``verifier.json`` of a role: hyper-parameters, seed, sizes, per-epoch history."""
    import json

    _check_role(role)
    return json.loads((pipe.get(f"reid_{role}") / "verifier.json").read_text())


def independence(pipe: Pipeline) -> dict:
    """What the defender and the auditor share: seeds, training patients, images, pairs."""
    info, names, pairs, patients = {}, {}, {}, {}
    for role in ROLES:
        path = pipe.get(f"reid_{role}")
        with np.load(path / "train_pairs.npz", allow_pickle=False) as z:
            a, b, label = z["a"], z["b"], z["label"]
        names[role] = set(a) | set(b)
        pairs[role] = {tuple(sorted(p)) for p in zip(a.tolist(), b.tolist())}
        patients[role] = set(np.load(path / "patients.npy", allow_pickle=False).tolist())
        info[role] = {"seed": training_info(pipe, role)["seed"], "n_patients": len(patients[role]),
                      "n_images": len(names[role]), "n_pairs": len(a), "n_same": int(label.sum())}
    info["shared_patients"] = len(patients["defender"] & patients["auditor"])
    info["shared_images"] = len(names["defender"] & names["auditor"])
    info["shared_pairs"] = len(pairs["defender"] & pairs["auditor"])
    return info


def evaluate(pipe: Pipeline, n_boot: int | None = None) -> dict[str, Evaluation]:
    """Defender, auditor and the raw-pixel baseline on the same test-split pairs (held-out
    patients), plus precision@1 — ``{"defender", "auditor", "raw pixels"}`` → ``Evaluation``."""
    from .data import load_splits

    params = reid_config(pipe.cfg)
    seed = int(pipe.cfg["seed"])
    n_boot = params["n_boot"] if n_boot is None else n_boot
    splits = load_splits(pipe)
    test, val = splits["test"], splits["val"]
    pairs = sample_pairs(test.patient_ids, test_pairs_seed(seed), split="test")
    val_pairs = sample_pairs(val.patient_ids, val_pairs_seed(seed), split="val")
    out = {}
    for role in ROLES:
        out[role] = evaluate_verifier(load_verifier(pipe, role), test, pairs, name=role, n_boot=n_boot,
                                      seed=derive_seed(seed, "reid", "bootstrap"),
                                      batch_size=params["eval_batch_size"])
    out["raw pixels"] = evaluate_pixels(test, pairs, val, val_pairs, n_boot=n_boot,
                                        seed=derive_seed(seed, "reid", "bootstrap"))
    return out
