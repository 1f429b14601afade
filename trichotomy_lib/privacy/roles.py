"""Who trains on what: the defender and the auditor verifiers (DESIGN step 2).

The training patients are split into two disjoint, seeded halves; the **defender** (used by
the privacy filter) is trained on pairs of the first half, the **auditor** (used only to
evaluate releases) on pairs of the second, each with its own seed. So the two share no
training pair, image or patient: the auditor's judgement of a filtered release is not the
defender's judgement repeated. Both select their best epoch on pairs of the shared,
patient-disjoint validation split.

``extra_patients`` (PhantomCXR only) adds that many fresh patients to each verifier's
training set, from a seed stream of its own (the roles still share no patient, and neither
shares one with any split or privacy population). It stands for what Packhäuser et al. had
and a small data holder lacks: a large public re-identification set of *other* patients.
Verification is a property of patients in general, not of the training patients, and it is
data-hungry.
"""

from __future__ import annotations

from .. import seeds
from ..data.imageset import ImageSet
from .controls import control_population
from .reid_train import split_patients

ROLES = ("defender", "auditor")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"verifier role must be one of {ROLES}, got {role!r}")


def role_seed(seed: int, role: str) -> int:
    """The seed of one verifier (initialisation, pairs, shuffles, augmentation)."""
    check_role(role)
    return seeds.derive(seed, "reid", role)


def val_pairs_seed(seed: int) -> int:
    return seeds.derive(seed, "reid", "val_pairs")


def test_pairs_seed(seed: int) -> int:
    return seeds.derive(seed, "reid", "test_pairs")


def role_train_set(train: ImageSet, seed: int, role: str, data_cfg: dict | None = None,
                   extra_patients: int = 0) -> ImageSet:
    """The training images of ``role``: the patients of its half of the training split, plus
    ``extra_patients`` (>= 0) fresh PhantomCXR patients of the role's own seed stream
    (``data_cfg``: the profile's ``data`` section, which must be ``source: phantom`` then)."""
    check_role(role)
    halves = split_patients(train.patient_ids, seeds.derive(seed, "reid", "patient_halves"))
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
