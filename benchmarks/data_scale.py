"""What closes the utility gap? Downstream AUROC against the number of training patients.

    .venv/bin/python benchmarks/data_scale.py                        # default profile: 250 500 1000 patients,
                                                                     #  both series (~35 min on 2 cores after a
                                                                     #  reproduction: its point is cached)
    .venv/bin/python benchmarks/data_scale.py 250 500 1000 2000 --series steps
    .venv/bin/python benchmarks/data_scale.py --profile smoke 40 80  # (~2 min)

The generator's training steps are not the lever for DiADM (``benchmarks/generator_budget.py``: flat
beyond 3,000 steps), so this script varies the other budget a diffusion model lives on: its data.
Each point is the profile with ``data.n_patients`` changed — the population the whole pipeline
trains on (split 80/10/10 as always; the val and test splits are fresh patients of the same
population, ``data.val_patients`` / ``data.test_patients``, drawn after the training patients, so each
point has its own test patients, of the same population and the same number). Through the project's
own cached stages (``--run-root``, default the profile's: the profile's own point is read, not
recomputed) every point retrains the conditioning encoder and the joint denoiser at the profile's
recipe, in one or both of two series (``--series``):

* ``steps``: the profile's denoiser steps at every size (the same compute: more patients, fewer
  passes over each image);
* ``epochs``: the steps scaled with the patients (``diffusion.train.steps`` × n / the profile's n:
  the same passes over each image, the compute growing with the data),

and draws two releases from it, EDM class-conditional and DiADM raw (the filter's first candidate; the
filter's defenders are not retrained per point, so the raw release stands for the method: the
filtered one read +0.4 points above it in the committed table). The reference classifier is trained
on the real training split and on each release with the same ``--seeds`` (default 2, the first of
the table's seeds) and tested on the point's test patients: Δ is paired (same test patients, same
seeds); intervals: the cluster bootstrap over test patients and the seed spread
(``evaluation.seeded``).

Printed: one row per point and release (mean AUROC, the real row's, Δ with its paired interval,
the training images, the denoiser's steps and seconds), then per series and release the slope of Δ per doubling of
the patients (least squares on log2 patients), the slope between the two largest points, and the
patients at which the line would reach Δ = −1 — an extrapolation of the measured line, labelled
as one (``analysis.utility.data_fit``). Written: ``--out`` (markdown + csv; default
``<figures_dir>/data_scale``, shown by notebook 07). Nothing is asserted. A point costs the encoder,
the denoiser, two samplings and the classifiers: 8–14 min at 1,000 patients on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.analysis.utility import DATA_SCALE, data_fit, utility_rows
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.releases import REAL, label
from trichotomy_lib.results import to_markdown

RELEASES = ("edm_class", "diadm_raw")
SERIES = ("steps", "epochs")   # the denoiser at the profile's steps / at steps scaled with the patients


def point_steps(resolved: dict, n: int, series: str) -> int:
    """The denoiser's training steps at ``n`` patients: the profile's (``steps``), or scaled with the
    patients so each image is seen as often as in the profile (``epochs``; at least 1).
    ``resolved``: the profile as a pipeline resolves it (``Pipeline.cfg``: the preset's steps filled in)."""
    steps = int(resolved["diffusion"]["train"]["steps"])
    return steps if series == "steps" else max(1, round(steps * n / int(resolved["data"]["n_patients"])))


def measure(cfg: dict, series: str) -> list[dict]:
    """One table row per release of ``RELEASES`` for the config ``cfg`` (its stages run on first use)."""
    pipe = Pipeline(cfg)
    result = utility_rows(pipe, releases=list(RELEASES))
    rows, info = result["rows"], result["info"]
    return [{"series": series, "patients": int(pipe.cfg["data"]["n_patients"]), "train_images": int(info[REAL]["n_train"]),
             "steps": int(pipe.cfg["diffusion"]["train"]["steps"]), "release": label(name),
             "seeds": rows[name]["n_seeds"], "mean_auroc": round(100 * rows[name]["auroc"]["mean"], 1),
             "real_auroc": round(100 * rows[REAL]["auroc"]["mean"], 1), "delta": round(rows[name]["diff_points"], 1),
             "delta_lo": round(rows[name]["diff_lo"], 1), "delta_hi": round(rows[name]["diff_hi"], 1),
             "diffusion_seconds": pipe.seconds("diffusion")} for name in RELEASES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("patients", type=int, nargs="*", default=[250, 500, 1000],
                    help="data.n_patients of each point (>= 20; the profile's own is read from the cache)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--series", nargs="+", choices=SERIES, default=list(SERIES),
                    help="steps: the profile's denoiser steps at every size; epochs: steps scaled with the patients")
    ap.add_argument("--seeds", type=int, default=2, help="classifier seeds per row (>= 1)")
    ap.add_argument("--out", default=None, help=f"output stem (.md, .csv); default <figures_dir>/{DATA_SCALE}")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    if not args.patients or min(args.patients) < 20:
        ap.error(f"give one or more patient counts >= 20, got {args.patients}")
    base = config.deep_merge(config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {}),
                             {"utility": {"seeds": args.seeds}})
    if base["data"].get("source", "phantom") != "phantom":
        ap.error(f"profile {args.profile!r} reads a file list: only PhantomCXR can draw more patients")
    resolved = Pipeline(base, verbose=False).cfg
    rows: list[dict] = []
    for series in dict.fromkeys(args.series):
        for n in sorted(set(args.patients)):
            steps = point_steps(resolved, n, series)
            print(f"== {series}: {n} training-population patients, {steps} denoiser steps", flush=True)
            # the autoguidance guide (an early checkpoint) must lie within a shortened run
            guide = resolved["diffusion"]["train"]["guide_step"]
            guide = () if guide is None or guide <= steps else (("diffusion.train.guide_step", steps),)
            rows += measure(config.with_settings(base, ("data.n_patients", n), ("diffusion.train.steps", steps), *guide),
                            series)
    table = pd.DataFrame(rows)
    fit = data_fit(table)
    out = Path(args.out) if args.out else config.figures_dir(base) / DATA_SCALE
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    text = (to_markdown(table, ".1f", index=False) + "\n\n"
            + (to_markdown(fit, ".2f", index=False) if len(fit) else "(one point: no fit)") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
