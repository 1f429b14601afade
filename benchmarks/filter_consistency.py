"""Choosing the filter's label-consistency target on data the final audit never sees.

Among a source's candidates that pass both vetoes, the filter releases the most label-consistent
ones, BCE(t, ŷ(c)) = −(1/8) Σ_k [t_k log ŷ_k(c) + (1 − t_k) log(1 − ŷ_k(c))], where ŷ(c) is
the reference classifier's output on the candidate and the target t is either

* ``prediction``: ŷ(s), the classifier's output on the source image (the paper), or
* ``labels``: y(s), the source's 0/1 labels — what the release is labelled with and what a
  classifier trained on it learns; the source image's own appearance then plays no part.

The vetoes do not depend on the target, so both targets see the same survivors: the 4-survivor
release (every survivor, up to 4 per source) holds the pool, and each target re-ranks it. For the
best 1 and best 2 per source, this script measures

* the mean AUROC on the real **val** split of the reference classifier recipe trained on the
  release (``--seeds`` classifier seeds; the test split stays for notebook 07);
* every attacker's singling-out risk of the best-1 release, played against **calibration
  populations** — fresh PhantomCXR patients from their own seed streams, in neither the control
  nor the weight population of the final audit (notebook 06), as ``condition_noise.py`` does.

It also checks that re-ranking by ``prediction`` gives back the cached releases exactly.

    python benchmarks/filter_consistency.py --profile default      # ~8 min on 2 cores

Run it after ``trichotomy reproduce --profile default`` (it reads the pipeline's cache).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.evaluation.classifier.consistency import label_consistency
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release, attack_summary
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.release import make_release
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_release
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe

def rank_per_source(source_index: np.ndarray, bce: np.ndarray) -> np.ndarray:
    """Each row's rank among its source's survivors by BCE (0 = lowest; ties in the pool's
    order), as the filter stage ranks them."""
    return pd.Series(bce).groupby(source_index).rank(method="first").to_numpy().astype(np.int64) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, default=2, help="classifier seeds per release (default 2)")
    args = ap.parse_args()
    pipe = Pipeline(config.resolve(args.profile), verbose=False)
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    splits = load_splits(pipe)
    train, val = splits["train"], splits["val"]
    pool, pool_src = load_release(pipe, "diadm_filter_4")
    clf = load_classifier(pipe)
    p_pool = clf.predict_proba(pool)
    targets = {"prediction": clf.predict_proba(train), "labels": train.labels.astype(np.float64)}
    calib = {k: control_population(cfg["data"], train.n_patients, seed, f"calibration-{k}", f"cal{k[0]}", progress=True)
             for k in ("control", "weight")}
    auditor = load_verifier(pipe, "auditor")
    embed, spaces = EmbeddingCache(auditor), attacker_spaces(pipe, cfg["privacy"]["attackers"])
    clf_seeds = [seed] + [seeds.derive(seed, "utility", "classifier", s) for s in range(1, args.seeds)]
    rows = []
    for target, t in targets.items():
        bce = label_consistency(t[pool_src], p_pool)
        for keep, cached in ((1, "diadm_filter"), (2, "diadm_filter_2nd")):
            rank = rank_per_source(pool_src, bce)
            picked = np.flatnonzero(rank < keep)
            name = f"{target}_{keep}"
            release = make_release(name, pool.images[picked], pool_src[picked], train, rank[picked])
            row = {"target": target, "best per source": keep, "images": len(release),
                   "mean BCE to labels": float(label_consistency(train.labels[pool_src[picked]], p_pool[picked]).mean())}
            if target == "prediction":  # the filter's own choice, reproduced
                ref, _ = load_release(pipe, cached)
                row["= cached release"] = bool(np.array_equal(np.sort(ref.images.reshape(len(ref), -1), axis=0),
                                                              np.sort(release.images.reshape(len(release), -1), axis=0)))
            aurocs = []
            for s in clf_seeds:
                _, probs = train_and_predict(release, val, val, classifier_recipe(cfg), s, progress=False)
                aurocs.append(auroc_table(val.labels, probs, n_boot=0).loc["mean", "auroc"])
            row["val mean AUROC"] = float(np.mean(aurocs))
            row["per seed"] = " ".join(f"{a:.3f}" for a in aurocs)
            if keep == 1:
                r = attack_release(release, pool_src[picked], train, calib["control"], auditor,
                                   {"seed": seed, "privacy": cfg["privacy"]}, heldout=calib["weight"], embed=embed,
                                   name=name, spaces=spaces)
                row.update(attack_summary(r))
            rows.append(row)
            print(row, flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index(["target", "best per source"]), ".3f"))


if __name__ == "__main__":
    main()
