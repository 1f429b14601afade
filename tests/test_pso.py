"""The predicate-singling-out attack (privacy/pso.py) and its controls (privacy/controls.py).

Logic tests use a rigged auditor: a real ``Verifier`` whose ``embed`` is an identity oracle
(each image maps to a fixed random vector of its patient, found by pixel nearest neighbour in
a registry of every image of the test, plus optional noise), so the attack's outcome is known
in advance. One test trains a tiny real auditor on PhantomCXR.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from trichotomy_lib.data.imageset import ImageSet
from trichotomy_lib.privacy.controls import (control_population, filelist_populations, negative_control_release,
                                             positive_control_release)
from trichotomy_lib.privacy.attack import evaluate_release
from trichotomy_lib.privacy.pso import (Population, calibrate_threshold, control_draws, count_matches, evaluate_pso,
                                        patient_scores, privacy_config)
from trichotomy_lib.privacy.reid_model import Verifier

SIZE, DIM = 16, 16


def make_population(prefix: str, n_patients: int, seed: int, single_label: bool = True) -> ImageSet:
    """Random-pattern "patients": a per-patient base image, 1-3 scans with small pixel noise."""
    rng = np.random.default_rng(seed)
    images, labels, pids, names = [], [], [], []
    for p in range(n_patients):
        base = rng.uniform(40, 215, size=(SIZE, SIZE))
        for s in range(int(rng.integers(1, 4))):
            images.append(np.clip(base + rng.normal(0, 4, size=base.shape), 0, 255).astype(np.uint8))
            lab = np.zeros(8, np.uint8)
            lab[int(rng.integers(0, 8))] = 1
            if not single_label and s == 0:
                lab[(np.argmax(lab) + 1) % 8] = 1
            labels.append(lab)
            pids.append(f"{prefix}{p:03d}")
            names.append(f"{prefix}{p:03d}/s{s}")
    return ImageSet(np.stack(images), np.stack(labels), np.array(pids), np.array(names))


class OracleVerifier(Verifier):
    """A Verifier whose embedding is its patient's fixed random vector (+ noise): the head is
    logit = bias − Σ|e1 − e2| (weights −1), so "same patient" iff the vectors nearly agree."""

    def __init__(self, registry: list[ImageSet], noise: float = 0.0, bias: float = 1.0):
        super().__init__(backbone="cnn", width=2, stages=1, embed_dim=DIM, image_size=SIZE)
        with torch.no_grad():
            self.head.weight.fill_(-1.0)
            self.head.bias.fill_(bias)
        self.keys = torch.cat([s.tensor().flatten(1) for s in registry])
        self.pids = np.concatenate([np.asarray(s.patient_ids).astype(str) for s in registry])
        self.noise = noise

    def patient_vector(self, pid: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(pid.encode()))
        return torch.rand(DIM, generator=g)

    @torch.no_grad()
    def embed(self, images, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        x = images.tensor() if isinstance(images, ImageSet) else images
        nn = torch.cdist(x.flatten(1), self.keys).argmin(1)
        emb = torch.stack([self.patient_vector(self.pids[i]) for i in nn.tolist()])
        if self.noise:
            g = torch.Generator().manual_seed(len(x))
            emb = (emb + self.noise * torch.randn(emb.shape, generator=g)).clamp(0, 1)
        return emb


@pytest.fixture(scope="module")
def world():
    train = make_population("tr", 60, 1)
    control = make_population("ct", 60, 2)
    weight = make_population("wt", 60, 3)
    heldout = make_population("ho", 30, 4, single_label=False)
    cfg = {"seed": 7, "privacy": {"n_attacks": 80}}
    return dict(train=train, control=control, weight=weight, heldout=heldout, cfg=cfg)


def _evaluate(world, auditor, release, source_index, name):
    return evaluate_release(release, source_index, world["train"], world["control"], auditor, world["cfg"],
                            heldout=world["weight"], reference=world["heldout"], name=name)


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_controls_fire_with_oracle_auditor(world, noise):
    registry = [world[k] for k in ("train", "control", "weight", "heldout")]
    auditor = OracleVerifier(registry, noise=noise)
    pos = _evaluate(world, auditor, *positive_control_release(world["train"], 0.05, seed=0), name="positive")
    neg = _evaluate(world, auditor, *negative_control_release(world["heldout"]), name="negative")
    for kind in ("verifier", "ball"):
        # positive control: the predicate of a copy isolates its source patient far above chance
        assert pos[f"{kind}_risk"] >= 0.4, (kind, pos[f"{kind}_attack_rate"], pos[f"{kind}_control_rate"])
        assert pos[f"{kind}_risk_lo"] > 0
        assert pos[f"{kind}_correct_rate"] >= 0.5          # ... and the isolated patient is the source's
        # negative control: other patients' images do no better than chance → CI includes 0
        assert neg[f"{kind}_risk_lo"] == 0.0, (kind, neg[f"{kind}_attack_rate"], neg[f"{kind}_control_rate"])
        assert pos[f"{kind}_risk"] > neg[f"{kind}_risk"]
        assert neg[f"{kind}_n_population"] == 60 and pos[f"{kind}_n_predicates"] == 80
    # the verifier predicate is never looser than the auditor's own decision threshold
    assert pos["verifier_threshold"] >= 0.0
    # the primary kind is repeated under pso_*
    assert pos["pso_risk"] == pos["ball_risk"] and pos["pso_kind"] == "ball"


def test_ball_weight_is_small_and_control_matches_theory(world):
    auditor = OracleVerifier([world[k] for k in ("train", "control", "weight", "heldout")])
    neg = _evaluate(world, auditor, *negative_control_release(world["heldout"]), name="negative")
    n = neg["ball_n_population"]
    assert neg["ball_target_weight"] == pytest.approx(0.1 / n)
    # weight estimated on the other half of the held-out patients: same order as the target
    assert neg["ball_weight"] < 5 / n
    # chance isolation B(n, w) <= 1/e, and the control rate is of that order
    assert 0 <= neg["ball_cn_baseline"] <= np.exp(-1) + 1e-9
    assert neg["ball_control_hi"] >= min(neg["ball_cn_baseline"], 0.3) - 0.2


def test_isolation_counts_patients_not_images():
    # one predicate; patient A has two images that both satisfy it, B one image that does not
    emb = torch.tensor([[0.0, 0.0], [0.01, 0.0], [5.0, 5.0]])
    pop = Population(emb, ["A", "A", "B"])
    scores = patient_scores("ball", torch.tensor([[0.0, 0.0]]), pop)
    assert scores.shape == (1, 2)
    count, who = count_matches(scores, -0.5)       # radius 0.5
    assert count.tolist() == [1] and pop.patients[who[0]] == "A"
    count, _ = count_matches(scores, -10.0)          # radius 10: both patients → not isolated
    assert count.tolist() == [2]


def test_calibrate_threshold_hits_target_and_respects_floor():
    scores = torch.arange(1000, dtype=torch.float32).reshape(10, 100)   # distinct values 0..999
    t, info = calibrate_threshold(scores, 0.01)                          # 10 pairs should pass
    assert int((scores >= t).sum()) == 10 and info["calibration_j"] == 10
    t, _ = calibrate_threshold(scores, 1e-5)                             # less than one pair: none pass
    assert int((scores >= t).sum()) == 0
    t, info = calibrate_threshold(scores, 0.5, floor=900.0)
    assert t == 900.0 and info["floored"]
    with pytest.raises(ValueError):
        calibrate_threshold(scores, 0.0)


def test_unequal_populations_are_equalised(world):
    """File-list case: a smaller control → the attack plays on as many training patients,
    and only predicates whose source patient is in that subsample are kept."""
    auditor = OracleVerifier([world[k] for k in ("train", "control", "weight", "heldout")])
    train, control = world["train"], world["control"]
    small = control.subset(np.isin(control.patient_ids, np.unique(control.patient_ids)[:20]))
    rel, src = positive_control_release(train, 0.05, seed=0)
    pick = np.arange(0, len(rel), 2)
    e = auditor.embed(rel.subset(pick))
    pops = [Population(auditor.embed(s), s.patient_ids) for s in (train, small, world["weight"])]
    res = evaluate_pso(e, train.patient_ids[src[pick]], *pops, auditor, kinds=("verifier",), seed=0)["verifier"]
    assert res["n_population"] == 20
    assert 0 < res["n_predicates"] <= len(pick)
    assert res["attack_rate"] > 0.9 and res["control_rate"] == 0.0


def test_control_draws_are_disjoint_populations_of_n():
    pop = Population(torch.zeros(70, 2), [f"p{i // 2:02d}" for i in range(70)])   # 35 patients, 2 images each
    draws = control_draws(pop, 10, np.random.default_rng(0))
    assert len(draws) == 3 and all(d.n == 10 and len(d.emb) == 20 for d in draws)
    assert len(set().union(*(set(d.patients) for d in draws))) == 30            # disjoint
    assert [d.n for d in control_draws(pop, 20, np.random.default_rng(0))] == [20]  # 1.75 n: one, subsampled
    assert control_draws(pop, 35, np.random.default_rng(0))[0] is pop
    with pytest.raises(ValueError, match="no draw of 36"):
        control_draws(pop, 36, np.random.default_rng(0))


def test_a_control_population_k_times_larger_is_played_as_k_draws(world):
    """3n control patients → 3 disjoint control populations of n, each predicate played on every
    one: its control outcome is their mean; 1.5n patients → one population of n, as before."""
    train = world["train"]
    extra = [make_population(f"c{i}", train.n_patients, 20 + i) for i in range(2)]
    auditor = OracleVerifier([train, world["control"], *extra, world["weight"]])
    big = ImageSet.concat([world["control"], *extra])
    rel, src = positive_control_release(train, 0.05, seed=0)
    e = auditor.embed(rel)
    pops = [Population(auditor.embed(s), s.patient_ids) for s in (train, big, world["weight"])]
    res = evaluate_pso(e, train.patient_ids[src], *pops, auditor, kinds=("ball",), seed=0)["ball"]
    assert res["control_draws"] == 3 and res["n_population"] == train.n_patients
    assert 0 < res["control_successes"] and res["control_rate"] == pytest.approx(
        res["control_successes"] / (3 * res["n_predicates"]))
    half = big.subset(np.isin(big.patient_ids, np.unique(big.patient_ids)[: int(1.5 * train.n_patients)]))
    res_half = evaluate_pso(e, train.patient_ids[src], pops[0], Population(auditor.embed(half), half.patient_ids),
                            pops[2], auditor, kinds=("ball",), seed=0)["ball"]
    assert res_half["control_draws"] == 1 and res_half["n_population"] == train.n_patients


def test_privacy_config_rejects_bad_values():
    with pytest.raises(Exception, match="privacy.typo"):
        privacy_config({"privacy": {"typo": 1}})
    with pytest.raises(ValueError, match="privacy.predicates"):
        privacy_config({"privacy": {"predicates": ["nope"]}})
    with pytest.raises(ValueError, match="privacy.weight_factor"):
        privacy_config({"privacy": {"weight_factor": 2}})
    with pytest.raises(ValueError, match="privacy.primary"):
        privacy_config({"privacy": {"predicates": ["verifier"]}})
    with pytest.raises(ValueError, match="privacy.n_boot"):
        privacy_config({"privacy": {"n_boot": 10}})
    for bad in (0, 1.5, True, "4"):
        with pytest.raises(ValueError, match="privacy.control_draws"):
            privacy_config({"privacy": {"control_draws": bad}})
    with pytest.raises(ValueError, match="cannot be combined with privacy.n_control_patients"):
        privacy_config({"privacy": {"control_draws": 2, "n_control_patients": 50}})
    for bad in ([0.0, 0.1], [0.1, 1.5], [0.1, 0.1], ["0.1"], [True], 0.1, "0.1"):
        with pytest.raises(ValueError, match="privacy.weight_sweep"):
            privacy_config({"privacy": {"weight_sweep": bad}})
    assert privacy_config({"privacy": {"weight_sweep": None}})["weight_sweep"] == []
    assert privacy_config({"privacy": {"weight_sweep": [1, 0.3]}})["weight_sweep"] == [1.0, 0.3]


def test_release_sharing_patients_with_control_is_refused(world):
    auditor = OracleVerifier([world[k] for k in ("train", "control", "weight", "heldout")])
    with pytest.raises(ValueError, match="shares"):
        evaluate_release(world["heldout"], None, world["train"], world["train"], auditor, world["cfg"],
                         heldout=world["weight"])


# ------------------------------------------------------------------ controls.py
def test_positive_control_release_noise_and_seeds(world):
    train = world["train"]
    rel, src = positive_control_release(train, 0.05, seed=3)
    assert np.array_equal(src, np.arange(len(train)))
    assert np.array_equal(rel.patient_ids, train.patient_ids) and np.array_equal(rel.labels, train.labels)
    diff = (rel.images.astype(float) - train.images.astype(float)) / 127.5
    assert 0.04 < diff.std() < 0.06                                   # σ in [-1, 1] units
    # per-sample seeds: image i's noise does not depend on the other images
    rel_sub, _ = positive_control_release(train.subset(np.arange(5)), 0.05, seed=3)
    assert np.array_equal(rel_sub.images, rel.images[:5])
    assert not np.array_equal(positive_control_release(train, 0.05, seed=4)[0].images, rel.images)
    with pytest.raises(ValueError, match="positive_sigma"):
        positive_control_release(train, -1.0, seed=0)


def test_control_population_phantom():
    from trichotomy_lib.data.build import build_dataset

    data_cfg = {"n_patients": 12, "image_size": 16, "max_scans": 3}
    train = build_dataset(data_cfg, seed=5)["train"]
    ctrl = control_population(data_cfg, 8, seed=5)
    assert ctrl.n_patients == 8
    assert all(p.startswith("ctrl:") for p in ctrl.patient_ids)
    assert not set(ctrl.patient_ids) & set(train.patient_ids)
    assert (ctrl.labels.sum(1) <= 1).all()                            # train-like: single-label only
    assert ctrl.images.shape[1:] == train.images.shape[1:]
    # a different seed stream: not the training patients re-labelled
    bare = np.char.replace(ctrl.patient_ids.astype(str), "ctrl:", "")
    same = np.intersect1d(bare, train.patient_ids)
    for pid in same[:3]:
        assert not np.array_equal(ctrl.images[bare == pid][0], train.images[train.patient_ids == pid][0])
    again = control_population(data_cfg, 8, seed=5)
    assert np.array_equal(again.images, ctrl.images)                  # deterministic
    other = control_population(data_cfg, 8, seed=5, stream="weight", prefix="wt")
    assert not np.array_equal(other.images[:4], ctrl.images[:4])
    with pytest.raises(ValueError, match="filelist"):
        control_population({"source": "filelist", "filelist": "x.txt"}, 8, seed=5)


def test_filelist_populations_are_patient_disjoint(world):
    val, test = make_population("va", 16, 8), make_population("te", 16, 9, single_label=False)
    parts = filelist_populations(val, test, seed=1)
    ids = {k: set(v.patient_ids) for k, v in parts.items()}
    for x, y in (("control", "weight"), ("control", "negative"), ("weight", "negative"), ("auditor", "control"),
                 ("auditor", "weight"), ("auditor", "negative")):
        assert not ids[x] & ids[y], (x, y)
    # every patient lands in exactly one part, unless it only had multi-label images and went to
    # control/weight (train-like: single-label only)
    both = ImageSet(*(np.concatenate([getattr(val, f), getattr(test, f)]) for f in ("images", "labels", "patient_ids", "names")))
    has_single = {p for p, lab in zip(both.patient_ids, both.labels) if lab.sum() <= 1}
    union = ids["control"] | ids["weight"] | ids["negative"] | ids["auditor"]
    assert has_single <= union <= set(both.patient_ids)
    neg = parts["negative"]                           # the release keeps every image of its patients
    assert len(neg) == int(np.isin(both.patient_ids, list(ids["negative"])).sum())
    assert len(ids["control"]) >= len(ids["weight"])
    assert (parts["control"].labels.sum(1) <= 1).all() and (parts["weight"].labels.sum(1) <= 1).all()
    with pytest.raises(ValueError, match="fractions"):
        filelist_populations(val, test, seed=1, fractions=(0.5, 0.5, 0.5))


def test_privacy_table_one_row_per_release(world):
    import pandas as pd

    from trichotomy_lib.analysis.privacy import privacy as privacy_table

    auditor = OracleVerifier([world[k] for k in ("train", "control", "weight", "heldout")])
    rows = []
    for name, (rel, src) in {"positive_control": positive_control_release(world["train"], 0.05, seed=0),
                             "negative_control": negative_control_release(world["heldout"])}.items():
        row = _evaluate(world, auditor, rel, src, name)
        row.pop("nn_distances"), row.pop("nn_reference")
        rows.append({**row, "label": name.replace("_", " ")})
    table = privacy_table(pd.DataFrame(rows).set_index("release"))
    assert list(table.index) == ["positive control", "negative control"]
    assert table.loc["negative control", "re-id vs source"] == "–"          # no source image
    assert float(table.loc["positive control", "risk"].split()[0]) >= 0.5   # "0.56 [0.43, 0.70]": rate [CI]
    assert {"PSO attack (ball)", "control", "chance B(n, w)"} <= set(table.columns)
