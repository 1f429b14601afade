"""The verifier's retrieval: what the in-batch retrieval term buys over pair BCE alone.

The verifier is trained on balanced same/different pairs with BCE (Packhäuser et al. 2022):
each step separates random pairs, one at a time. Retrieval precision@1 asks more: among every
image of a population, is the nearest one the same patient? With 1,000 test patients a
verifier that separates random pairs well (AUROC 0.99) can still rank a look-alike first.
``reid.retrieval_loss`` = λ adds, on the same head logit S_ij = w·|e_i − e_j| + b, a
supervised-contrastive term over the batch (``reid_train.retrieval_loss``): every image's own
patient against every other patient of the batch.

For each λ this script trains a role's recipe exactly as its stage does (same training set,
seed, pairs, validation pairs, epochs) and reports the seconds, the kept epoch, the validation
split's precision@1 — λ is chosen on it, a population the privacy audit never plays on —
and, for reading only, the test split's AUROC and precision@1 (notebook 01's numbers).

    python benchmarks/reid_retrieval.py --profile default                       # ~15 min on 2 cores
    python benchmarks/reid_retrieval.py --profile default --roles defender auditor --lambdas 0 1
    python benchmarks/reid_retrieval.py --roles auditor --lambdas 3 --set reid.auditor_patients=2000

``--set`` changes profile settings for every point (the levers beside λ: the number of
training patients, ``reid.width``, ``reid.epochs``, …); each ``--variant`` adds points with more
settings changed on top, trained in the same process beside the reference (``--set`` alone), so
a lever is read against a reference of the same machine and draw; each row names its settings.

    python benchmarks/reid_retrieval.py --roles defender --lambdas 3 \
        --variant reid.lr_schedule=cosine reid.patience=null --variant reid.select=precision_at_1

In-batch negatives (``reid.negatives=in_batch``: half the steps an epoch) and the patients they buy:

    python benchmarks/reid_retrieval.py --roles defender --lambdas 3 --set reid.negatives=in_batch \
        --variant reid.extra_patients=2000 --variant reid.extra_patients=3500

Run it after notebook 00 (``trichotomy reproduce --profile default --only 00``; it reads the
pipeline's data cache, and generates the defender's extra patients itself).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.reid_eval import evaluate_verifier
from trichotomy_lib.privacy.reid_train import REID_DEFAULTS, sample_pairs, train_verifier
from trichotomy_lib.privacy.roles import role_seed, test_pairs_seed
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.reid import role_data, role_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--roles", nargs="+", default=["defender"], choices=["defender", "auditor"])
    ap.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 1.0, 3.0],
                    help="retrieval-loss weights to train (default 0 1 3)")
    ap.add_argument("--set", dest="settings", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="profile settings changed for every point, e.g. reid.auditor_patients=2000 reid.width=24")
    ap.add_argument("--variant", dest="variants", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="one more point per λ with these settings changed on top of --set (repeatable)")
    args = ap.parse_args()
    try:
        settings = [config.parse_setting(text) for text in args.settings]
        variants = [[config.parse_setting(text) for text in v] for v in args.variants]
    except config.ConfigError as e:
        raise SystemExit(f"--set/--variant: {e}") from None
    for key, _ in (c for v in variants for c in v):   # every point shares the reference's seed and test split
        if key == "seed" or key.split(".")[0] == "data":
            raise SystemExit(f"--variant {key}: the seed and the data are the reference's for every point; "
                             "give them with --set (a separate run)")
    reference = config.with_settings(config.resolve(args.profile), *settings)
    points = [(" ".join(args.settings) or "(profile)", Pipeline(reference, verbose=False))]
    points += [(" ".join([*args.settings, *text]), Pipeline(config.with_settings(reference, *changes), verbose=False))
               for text, changes in zip(args.variants, variants)]   # every point's config validated before training
    seed = int(reference["seed"])
    test = load_splits(points[0][1])["test"]
    test_pairs = sample_pairs(test.patient_ids, test_pairs_seed(seed), split="test")
    rows = []
    for role, (label, pipe) in ((r, pt) for r in args.roles for pt in points):
        cfg = pipe.cfg
        base = {**REID_DEFAULTS, **role_params(cfg["reid"], role)}
        train, val, val_pairs = role_data(pipe, cfg, role)
        own = role_seed(seed, role)
        pairs = sample_pairs(train.patient_ids, seeds.derive(own, "pairs"), base["max_pos_per_patient"],
                             split=f"train ({role})")
        for lam in args.lambdas:
            t0 = time.perf_counter()
            model, hist = train_verifier(train, val, {**base, "retrieval_loss": lam}, own, pairs=pairs,
                                         val_pairs=val_pairs, desc=f"{role} λ={lam:g}")
            seconds = time.perf_counter() - t0
            ev = evaluate_verifier(model, test, test_pairs, name=role, n_boot=0)
            p_test = ev.metrics["precision_at_1"]
            row = {"role": role, "retrieval_loss": lam,
                   "settings": label, "train seconds": round(seconds, 1),
                   "epochs run": len(hist["val_auroc"]), "kept epoch": hist["best_epoch"],
                   "val pair AUROC": hist["best_val_auroc"],
                   "val precision@1": hist["val_precision_at_1"][hist["best_epoch"]],   # the kept epoch's
                   "val patients": int(val.n_patients), "test AUROC": ev.metrics["auroc"][0],
                   "test precision@1": p_test["value"], "test precision@1 lo": p_test["lo"],
                   "test precision@1 hi": p_test["hi"], "test patients": int(test.n_patients)}
            rows.append(row)
            print(row, flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index(["role", "retrieval_loss", "settings"]), ".3f"))


if __name__ == "__main__":
    main()
