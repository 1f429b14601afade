"""Would a label-consistency bound on the kept survivors make more synthetic data better?

The filter keeps each source's best survivors by label consistency, BCE(s, c) to the source s
(``privacy.sample_filter``). On the default run the 4-survivor release trains a worse classifier
than the 1-survivor one (notebook 07), and its extra survivors are less label-consistent (BCE
rising with rank). This script keeps, beside every source's chosen survivor, only the extra
survivors with BCE <= tau, and trains the reference classifier recipe on each set (``--seeds``
classifier seeds, default 1, the same for every set). The mean AUROC is read on the real **val** split, which also picks the
epoch (as ``benchmarks/condition_noise.py`` does): the test split stays for notebook 07.

    python benchmarks/survivor_bound.py --profile default 0.25 0.35
    python benchmarks/survivor_bound.py --profile default --chosen-quantiles 0.9 0.75 --seeds 2

``--chosen-quantiles`` asks the question one step earlier: a floor on the *chosen* survivor. The
1-survivor release keeps only the sources whose chosen survivor's BCE is at most its q-quantile
(the least label-consistent sources are dropped, their labels being the likeliest noise).

Run it after ``trichotomy reproduce --profile default`` (it reads the cached 4-survivor release
and its audit; ``--run-root`` points at another cache). Nothing is asserted.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.sample_filter import RANKED
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_audit, load_release
from trichotomy_lib.stages.utility import classifier_recipe, row_seed

RELEASE = "diadm_filter_4"


def survivor_bce(audit: pd.DataFrame, source_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, BCE) of every released image. A release lists each source's survivors best first,
    as the filter ranked them: by BCE, ties in drawing order."""
    kept = audit[audit["decision"].isin(RANKED) & audit["released"]]
    by_source = {s: rows.sort_values(["bce", "attempt", "candidate"])["bce"].to_numpy()
                 for s, rows in kept.groupby("source_index")}
    rank, bce, seen = np.zeros(len(source_index), np.int64), np.zeros(len(source_index)), {}
    for i, s in enumerate(source_index):
        r = seen.get(int(s), 0)
        rank[i], bce[i], seen[int(s)] = r, by_source[int(s)][r], r + 1
    return rank, bce


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("taus", nargs="*", type=float, help="BCE bounds on the extra survivors")
    ap.add_argument("--chosen-quantiles", nargs="+", type=float, default=[],
                    help="instead: keep the sources whose chosen survivor's BCE is at most this quantile, in (0, 1]")
    ap.add_argument("--seeds", type=int, default=1, help="classifier seeds per set (the utility table's), >= 1")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    args = ap.parse_args()
    cfg = config.resolve(args.profile)
    if args.run_root is not None:
        cfg = config.deep_merge(cfg, {"run_root": args.run_root})
    if not (args.taus or args.chosen_quantiles) or (args.taus and args.chosen_quantiles):
        ap.error("give BCE bounds on the extra survivors or --chosen-quantiles, one of the two")
    if not all(0 < q <= 1 for q in args.chosen_quantiles) or args.seeds < 1:
        ap.error("--chosen-quantiles must lie in (0, 1] and --seeds be >= 1")
    pipe = Pipeline(cfg, verbose=False)
    val = load_splits(pipe)["val"]
    release, source_index = load_release(pipe, RELEASE)
    rank, bce = survivor_bce(load_audit(pipe, RELEASE), source_index)
    print(pd.DataFrame({"rank": rank + 1, "bce": bce}).groupby("rank")["bce"].describe().to_string(), flush=True)
    if args.chosen_quantiles:  # the 1-survivor release (each source's rank-0 survivor), floored
        chosen = bce[rank == 0]
        sets = {"chosen survivors (no floor)": rank == 0}
        sets.update({f"chosen with BCE <= its {q:g}-quantile ({np.quantile(chosen, q):.3f})":
                     (rank == 0) & (bce <= np.quantile(chosen, q)) for q in args.chosen_quantiles})
    else:
        sets = {"best survivor only": rank == 0, "best 4 (no bound)": np.ones(len(rank), bool)}
        sets.update({f"best + extras with BCE <= {t:g}": (rank == 0) | (bce <= t) for t in args.taus})
    recipe, seed, rows = classifier_recipe(pipe.cfg), int(pipe.cfg["seed"]), []
    for name, keep in sets.items():
        aurocs = []
        for i in range(args.seeds):
            _, probs = train_and_predict(release.subset(np.flatnonzero(keep)), val, val, recipe, row_seed(seed, i))
            aurocs.append(100 * auroc_table(val.labels, probs, n_boot=0).loc["mean", "auroc"])
        rows.append({"training set": name, "images": int(keep.sum()), "val mean AUROC": float(np.mean(aurocs)),
                     "per seed": " / ".join(f"{a:.1f}" for a in aurocs)})
        print(rows[-1], flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index("training set"), ".1f"))


if __name__ == "__main__":
    main()
