"""Notebook 01's tables: what the two verifiers share, and how well they recognise unseen patients."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import seeds
from ..pipeline import Pipeline
from ..privacy.reid_eval import Evaluation, evaluate_pixels, evaluate_verifier
from ..privacy.reid_train import sample_pairs
from ..privacy.roles import ROLES, test_pairs_seed, val_pairs_seed
from ..stages.data import load_splits
from ..stages.reid import load_verifier, training_info, training_pairs

__all__ = ["reid_training", "independence", "evaluate", "reid_metrics", "retrieval_against_target"]


def reid_training(pipe: Pipeline) -> pd.DataFrame:
    """One column per role: architecture, training set sizes, epochs, the kept epoch and its validation AUROC."""
    cols = {}
    for role in ROLES:
        i = training_info(pipe, role)
        cols[role] = {"backbone": i["config"]["backbone"], "image size": i["config"]["image_size"],
                      "embedding": i["config"]["embed_dim"], "training patients": i["n_train_patients"],
                      "training images": i["n_train_images"], "training pairs (same + different)": i["history"]["n_pairs"],
                      "epochs run": len(i["history"]["val_auroc"]), "kept epoch (reid.select)": i["history"]["best_epoch"],
                      "kept epoch's val AUROC": round(i["history"]["best_val_auroc"], 4),
                      "stage wall time (s)": pipe.seconds(f"reid_{role}")}
    return pd.DataFrame(cols)


def independence(pipe: Pipeline) -> dict:
    """What the defender and the auditor share: seeds, training patients, images, pairs."""
    info, names, pairs, patients = {}, {}, {}, {}
    for role in ROLES:
        tp = training_pairs(pipe, role)
        names[role] = set(tp["a"]) | set(tp["b"])
        pairs[role] = {tuple(sorted(p)) for p in zip(tp["a"].tolist(), tp["b"].tolist())}
        patients[role] = set(tp["patients"].tolist())
        info[role] = {"seed": training_info(pipe, role)["seed"], "n_patients": len(patients[role]),
                      "n_images": len(names[role]), "n_pairs": len(tp["a"]), "n_same": int(tp["label"].sum())}
    info["shared_patients"] = len(patients["defender"] & patients["auditor"])
    info["shared_images"] = len(names["defender"] & names["auditor"])
    info["shared_pairs"] = len(pairs["defender"] & pairs["auditor"])
    return info


def evaluate(pipe: Pipeline, n_boot: int | None = None) -> dict[str, Evaluation]:
    """Defender, auditor and the raw-pixel baseline on the same test-split pairs (held-out
    patients), plus precision@1 — ``{"defender", "auditor", "raw pixels"}`` → ``Evaluation``."""
    params = pipe.cfg["reid"]
    seed = int(pipe.cfg["seed"])
    n_boot = params["n_boot"] if n_boot is None else n_boot
    splits = load_splits(pipe)
    test, val = splits["test"], splits["val"]
    pairs = sample_pairs(test.patient_ids, test_pairs_seed(seed), split="test")
    val_pairs = sample_pairs(val.patient_ids, val_pairs_seed(seed), split="val")
    boot_seed = seeds.derive(seed, "reid", "bootstrap")
    out = {role: evaluate_verifier(load_verifier(pipe, role), test, pairs, name=role, n_boot=n_boot, seed=boot_seed,
                                   batch_size=params["eval_batch_size"]) for role in ROLES}
    out["raw pixels"] = evaluate_pixels(test, pairs, val, val_pairs, n_boot=n_boot, seed=boot_seed)
    return out


def reid_metrics(report: dict[str, Evaluation]) -> pd.DataFrame:
    """One row per scorer: AUROC, accuracy, F1, precision@1, each with its 95 % interval."""
    rows = {}
    for name, ev in report.items():
        m, p1 = ev.metrics, ev.metrics["precision_at_1"]
        row = {}
        for metric, (value, lo, hi) in (("AUROC", m["auroc"]), ("accuracy", m["accuracy"]), ("F1", m["f1"]),
                                         ("precision@1", (p1["value"], p1["lo"], p1["hi"]))):
            row.update({metric: value, f"{metric} lo": lo, f"{metric} hi": hi})
        row["test pairs"] = m["n_pairs"]
        rows[name] = row
    table = pd.DataFrame(rows).T
    table.index.name = "scorer"
    return table.astype({c: float for c in table.columns if c != "test pairs"}).astype({"test pairs": int})


def hardest_pair_probability(ev: Evaluation, k: int) -> float:
    """P(same patient) of pair ``k`` of an evaluation (sigmoid of its logit)."""
    return float(1.0 / (1.0 + np.exp(-ev.scores[k])))


def retrieval_against_target(report: dict[str, Evaluation], target: float = 0.95) -> pd.DataFrame:
    """Each verifier's test precision@1 against a target (default 0.95; Packhäuser et al. report
    0.996 on ChestX-ray14): the value, its Wilson interval, the test patients it ranks among,
    and by how many points the interval's upper end falls short (0 when the target is inside
    or below the interval)."""
    if not 0 < target <= 1:
        raise ValueError(f"target precision@1 must be in (0, 1], got {target!r}")
    rows = {}
    for name, ev in report.items():
        if name == "raw pixels":
            continue
        p1 = ev.metrics["precision_at_1"]
        rows[name] = {"precision@1": p1["value"], "lo": p1["lo"], "hi": p1["hi"], "queries": p1["n"],
                      "target": target, "short by (points)": round(max(0.0, target - p1["hi"]) * 100, 1),
                      "met": bool(p1["lo"] >= target)}
    table = pd.DataFrame(rows).T
    table.index.name = "verifier"
    return table
