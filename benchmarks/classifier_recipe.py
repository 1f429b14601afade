"""The reference classifier's recipe, read on the val split: which recipe narrows the utility gap
without lowering the real row?

Every row of the utility table (notebook 07) is one recipe, the ``classifier`` section, applied
to a training set. A classifier trained on synthetic images can learn what only the generator
puts there: trained on a release for 20 epochs, its loss on the *real* val split is lowest after
a few epochs and then rises, where the real row's keeps falling (the kept epochs in the utility
stages' ``info.json``). A recipe that makes those features harder to use (pixel noise, stronger
intensity jitter, weight decay) may close part of the gap — or may only lower the real row.

For the profile's recipe and each ``--variant`` of it (``classifier.KEY=VALUE ...``, one point per
``--variant``), this script trains the real training split and each ``--releases`` set with
``--seeds`` seeds (the utility table's seeds) and reports the mean val AUROC of every set, the gap
real − release and the seed sd. The val split also picks each classifier's epoch, as in the table;
the test split stays for notebook 07. A recipe is chosen here, on val, and only where the real row
does not fall: then the table on test measures it without having chosen it.

    python benchmarks/classifier_recipe.py --profile default \\
        --variant classifier.augment.noise=0.1 --variant classifier.weight_decay=0.0001

Early stopping is a recipe too, read for its seconds as much as its AUROC (each recipe's training
seconds are summed over its sets and seeds, run one after another):

    python benchmarks/classifier_recipe.py --releases diadm_filter edm_class --seeds 3 \\
        --variant classifier.patience=4

Run it after ``trichotomy reproduce --profile default`` (it reads the releases from the pipeline's
cache; ``--run-root`` points at another one). ``--out`` writes the table (.md, .csv). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.evaluation.classifier import fit_classifier
from trichotomy_lib.evaluation.stats import mean_auroc
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.releases import REAL, RELEASES, label
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_release
from trichotomy_lib.stages.utility import classifier_recipe, row_seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--releases", nargs="+", default=["diadm_filter"], choices=list(RELEASES))
    ap.add_argument("--variant", dest="variants", action="append", nargs="+", default=[],
                    metavar="classifier.KEY=VALUE", help="one more recipe with these settings changed (repeatable)")
    ap.add_argument("--seeds", type=int, default=2, help="classifier seeds per (recipe, set), >= 1")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--out", default=None, help="output stem (.md, .csv); default: print only")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    try:
        variants = [[config.parse_setting(text) for text in v] for v in args.variants]
    except config.ConfigError as e:
        raise SystemExit(f"--variant: {e}") from None
    for key, _ in (c for v in variants for c in v):
        if key.split(".")[0] != "classifier":
            raise SystemExit(f"--variant {key}: only classifier.* settings are a recipe")
    cfg = config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {})
    pipe = Pipeline(cfg, verbose=False)
    splits = load_splits(pipe)
    val, seed = splits["val"], int(cfg["seed"])
    sets = {label(REAL): splits["train"], **{label(n): load_release(pipe, n)[0] for n in args.releases}}
    recipes = [("(profile)", classifier_recipe(pipe.cfg))]
    recipes += [(" ".join(text), classifier_recipe(Pipeline(config.with_settings(cfg, *changes), verbose=False).cfg))
                for text, changes in zip(args.variants, variants)]   # every recipe checked before training

    jobs = [(r, s, i) for r in range(len(recipes)) for s in sets for i in range(args.seeds)]
    scores = []
    for r, name, i in tqdm(jobs, desc="classifier recipes", unit="classifier"):
        t0 = time.perf_counter()
        clf = fit_classifier(sets[name], val, recipes[r][1], seed=row_seed(seed, i), progress=False)
        seconds = time.perf_counter() - t0
        auroc = 100 * mean_auroc(val.labels, clf.predict_proba(val))
        scores.append({"recipe": recipes[r][0], "training set": name, "seed": i, "val mean AUROC": auroc,
                       "kept epoch": clf.best_epoch, "seconds": seconds})
        tqdm.write(str(scores[-1]))
    long = pd.DataFrame(scores)
    mean = long.pivot_table(index="recipe", columns="training set", values="val mean AUROC", sort=False)
    table = mean[list(sets)].copy()
    real = label(REAL)
    for name in list(sets)[1:]:
        table[f"gap to real: {name}"] = mean[real] - mean[name]
    sd = long.groupby(["recipe", "training set"], sort=False)["val mean AUROC"].std()
    table["largest seed sd"] = sd.groupby(level=0, sort=False).max() if args.seeds > 1 else np.nan
    kept = long.groupby(["recipe", "training set"], sort=False)["kept epoch"].apply(lambda e: "/".join(map(str, e)))
    for name in sets:
        table[f"kept epochs: {name}"] = [kept[(r, name)] for r in table.index]
    table["training seconds (all sets and seeds)"] = long.groupby("recipe", sort=False)["seconds"].sum()
    table["seeds"] = args.seeds
    text = (f"val mean AUROC (points; {args.seeds} classifier seeds per recipe and set; the epoch chosen on val)\n\n"
            + to_markdown(table, ".1f") + "\n")
    if args.out:
        out = Path(args.out)
        with atomic_path(out.with_suffix(".csv")) as tmp:
            table.to_csv(tmp)
        atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
