"""Where does the utility gap sit: in the synthetic images, or in the labels they carry?

Every release is labelled with its source's labels (DESIGN step 6). A classifier trained on it
falls short of the real-data one for two reasons that the main table cannot tell apart:

* **label noise** — a sample that does not show its source's findings still carries their labels;
* **the images** — a sample that shows the right findings in an appearance real images do not
  have (or that lacks what tells two findings apart) teaches features that do not transfer.

This script separates the two with a teacher: the reference classifier (trained on the real
training split; the network the filter ranks survivors with). Each training set is learnt twice by
the reference recipe, once from the labels it carries and once from the teacher's outputs on its
own images as soft BCE targets (distillation, ``fit_classifier(targets=...)``). Distillation
replaces every label by what the teacher sees in that image, so it removes label noise and keeps
the images. Real images distilled give the teacher's own ceiling. Then, for a release,

    gap to real        = real (labels)  − release (labels)
    left in the images = real (teacher) − release (teacher)

and the rest of the gap is label noise. Beside them: how well the teacher reads each set's labels
from its images (its mean AUROC against the carried labels, and per finding in the markdown: which
findings the samples do not show; on the real training split that is its own training data, so
the real val split's reading is shown too).

Mean AUROC on the real **val** split, which also picks the epoch; the test split stays for
notebook 07. ``--seeds`` classifier seeds (the utility table's seeds), the same for every set.
Distillation is a diagnostic here, not the paper's recipe: a release's labels are its sources'.

    python benchmarks/utility_gap.py --profile default            # ~7 min on 2 cores

Written: ``--out`` (markdown + csv; default ``<figures_dir>/utility_gap``, shown by notebook 07).

Run it after ``trichotomy reproduce --profile default`` (it reads the pipeline's cache; ``--run-root``
points at another one). Nothing is asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.analysis.utility import UTILITY_GAP, gap_decomposition
from trichotomy_lib.data.imageset import LABELS
from trichotomy_lib.evaluation.classifier import fit_classifier
from trichotomy_lib.evaluation.stats import auroc_table, mean_auroc
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.releases import REAL, RELEASES, label
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_release
from trichotomy_lib.stages.utility import classifier_recipe, row_seed


def per_class_reading(labels: np.ndarray, probs: np.ndarray) -> pd.Series:
    """The teacher's AUROC per finding against a set's labels, in points: which findings its images show."""
    return 100 * auroc_table(labels, probs, class_names=list(LABELS), n_boot=0)["auroc"].drop("mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--releases", nargs="+", default=["edm_class", "diadm_raw", "diadm_filter"],
                    choices=list(RELEASES))
    ap.add_argument("--seeds", type=int, default=2, help="classifier seeds per (set, targets), >= 1")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--out", default=None,
                    help=f"output stem (.md, .csv); default <figures_dir>/{UTILITY_GAP}, which notebook 07 reads")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    cfg = config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {})
    pipe = Pipeline(cfg, verbose=False)
    splits = load_splits(pipe)
    val, teacher = splits["val"], load_classifier(pipe)
    sets = {label(REAL): splits["train"], **{label(n): load_release(pipe, n)[0] for n in args.releases}}
    recipe, seed = classifier_recipe(pipe.cfg), int(pipe.cfg["seed"])

    read_sets = {**sets, "real val split (unseen)": val}
    outputs = {name: teacher.predict_proba(s) for name, s in read_sets.items()}
    reading = {name: 100 * mean_auroc(s.labels, outputs[name]) for name, s in read_sets.items()}
    by_finding = pd.DataFrame({name: per_class_reading(s.labels, outputs[name]) for name, s in read_sets.items()}).T
    by_finding.index.name = "the teacher reads each finding's labels (AUROC) of"
    print("the teacher's mean AUROC against each set's own labels:",
          {k: round(v, 1) for k, v in reading.items()}, flush=True)

    jobs = [(name, targets, i) for name in sets for targets in ("labels", "teacher") for i in range(args.seeds)]
    scores = []
    for name, targets, i in tqdm(jobs, desc="utility gap", unit="classifier"):
        s = sets[name]
        soft = teacher.predict_proba(s).astype(np.float32) if targets == "teacher" else None
        clf = fit_classifier(s, val, recipe, seed=row_seed(seed, i), progress=False, targets=soft)
        scores.append({"training set": name, "targets": targets, "seed": i,
                       "val mean AUROC": 100 * mean_auroc(val.labels, clf.predict_proba(val))})
        tqdm.write(str(scores[-1]))
    long = pd.DataFrame(scores)
    table = long.pivot_table(index="training set", columns="targets", values="val mean AUROC", aggfunc="mean",
                             sort=False)
    spread = long.pivot_table(index="training set", columns="targets", values="val mean AUROC", aggfunc="std",
                              sort=False)
    table = table.loc[list(sets)]
    table["seed sd (labels)"] = spread.loc[list(sets), "labels"] if args.seeds > 1 else np.nan
    table["seed sd (teacher)"] = spread.loc[list(sets), "teacher"] if args.seeds > 1 else np.nan
    table["teacher reads the labels (AUROC)"] = [reading[n] for n in table.index]
    table["seeds"] = args.seeds
    table.index.name = "training set"
    out = Path(args.out) if args.out else config.figures_dir(cfg) / UTILITY_GAP
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp)
    text = (f"val mean AUROC (points; {args.seeds} classifier seeds; the teacher reads the real val split's labels "
            f"at {reading['real val split (unseen)']:.1f})\n\n" + to_markdown(table, ".1f") + "\n\n"
            + to_markdown(gap_decomposition(table), "+.1f") + "\n\n" + to_markdown(by_finding, ".1f") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
