"""Does the filter alone make the paper's DiADM PSO-secure? The condition and the filter, apart.

The profile's DiADM differs from the paper's in its condition: the source's labels beside an
embedding noised with σ = ``generate.condition_noise`` (the paper: the clean embedding alone).
Both are privacy levers, so the main table cannot say which one does the work. This script
draws the raw release and runs the whole filter (the profile's ``generate.filter``, every veto)
under both conditions — the filter stage itself, with the condition switched in the config, so
its cache sits beside the reproduction's — and plays every attacker against each of the four
releases on **calibration populations**: fresh PhantomCXR patients from their own seed streams,
in neither the control nor the weight population of the final audit (as ``condition_noise.py``
does). It also trains the reference classifier recipe on each release (``--seeds`` seeds, the
utility table's) and reads the mean AUROC on the real **val** split (the test split stays for
notebook 07).

    python benchmarks/paper_condition.py --profile default      # ~10 min on 2 cores after a reproduction

Run it after ``trichotomy reproduce --profile default`` (``--run-root`` points at another cache).
Nothing is asserted; nothing here sets a default.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.pso import ATTACKER_LABELS
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_release, release_info
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe, row_seed

PAPER = {"condition_noise": 0.0, "condition_labels": False}   # the paper's DiADM condition


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, default=1, help="classifier seeds per release, >= 1")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    base = config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {})
    pipe = Pipeline(base, verbose=False)
    g = pipe.cfg["generate"]
    profile_condition = ("labels + " if g["condition_labels"] else "") + f"embedding, σ = {g['condition_noise']:g}"
    conditions = {f"{profile_condition} (the profile)": pipe,
                  "clean embedding alone (the paper)": Pipeline(config.deep_merge(base, {"generate": PAPER}),
                                                                verbose=False)}
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    splits = load_splits(pipe)
    train, val = splits["train"], splits["val"]
    calib = {k: control_population(cfg["data"], train.n_patients, seed, f"calibration-{k}", f"cal{k[0]}", progress=True)
             for k in ("control", "weight")}
    auditor = load_verifier(pipe, "auditor")
    embed, spaces = EmbeddingCache(auditor), attacker_spaces(pipe, cfg["privacy"]["attackers"])
    recipe, rows = classifier_recipe(cfg), []
    for condition, arm in conditions.items():
        for name in ("diadm_raw", "diadm_filter"):
            release, source_index = load_release(arm, name)   # the filter runs here for the paper's condition
            r = attack_release(release, source_index, train, calib["control"], auditor,
                               {"seed": seed, "privacy": cfg["privacy"]}, heldout=calib["weight"], embed=embed,
                               name=name, spaces=spaces)
            aurocs = []
            for i in tqdm(range(args.seeds), desc=f"{name}: classifiers", leave=False):
                _, probs = train_and_predict(release, val, val, recipe, row_seed(seed, i), progress=False)
                aurocs.append(100 * auroc_table(val.labels, probs, n_boot=0).loc["mean", "auroc"])
            summary = release_info(arm, name).get("summary", {})
            row = {"condition": condition, "release": "raw" if name == "diadm_raw" else "filtered",
                   "images": len(release), "sources skipped": summary.get("n_skipped", 0),
                   "first-attempt veto rate": summary.get("first_attempt_flag_rate", np.nan),
                   "val mean AUROC": float(np.mean(aurocs)),
                   "strongest": ATTACKER_LABELS.get(r["strongest_attacker"], r["strongest_attacker"]),
                   "strongest risk": r["strongest_risk"],
                   "upper bound (corrected)": r["strongest_risk_hi"],
                   "highest corrected lower bound": max(r[f"{k}_risk_lo_corrected"] for k in ATTACKER_LABELS
                                                        if f"{k}_risk_lo_corrected" in r)}
            row.update({f"{ATTACKER_LABELS[k]} risk": r[f"{k}_risk"] for k in ATTACKER_LABELS if f"{k}_risk" in r})
            rows.append(row)
            tqdm.write(str(row))
    print()
    print(to_markdown(pd.DataFrame(rows).set_index(["condition", "release"]), ".3f"))


if __name__ == "__main__":
    main()
