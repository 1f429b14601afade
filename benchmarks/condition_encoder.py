"""Does an encoder told to keep the findings make DiADM's condition worth more?

DiADM conditions on its source's embedding e plus noise (``generate.condition_noise``):
c = sqrt(D) · (e + σ·n) / ‖e + σ·n‖. Isotropic noise blurs every direction of e alike, so what
survives depends on how much of e's length the findings hold. The default encoder is SimCLR alone,
made invariant to pose and exposure but told nothing about findings; ``encoder.label_weight`` λ
adds a findings head to its loss (``encoders.ssl``, eq. 3), so the findings become large
directions of e. This script measures, for each λ, on the raw DiADM release of the pipeline (the
filter's first candidate per source; the encoder, the joint denoiser and the release are retrained
for every λ, so a point costs the encoder, the denoiser and the sampling: ~10 min on 2 cores):

* the mean AUROC on the real **val** split of the reference classifier recipe trained on the
  release (``--seeds`` classifier seeds; the test split stays for notebook 07);
* how well the **teacher** (the reference classifier trained on the real training split) reads
  the release's own labels from its images;
* with ``--class``, the same for the EDM class-conditional release of the same joint denoiser;
* every attacker's singling-out risk against **calibration populations** (fresh PhantomCXR
  patients from their own seed streams, none in the final audit's control or weight
  populations), each attacker in this λ's own spaces (the conditioning-encoder ball uses this
  λ's encoder), so the λ it picks does not grade itself.

    python benchmarks/condition_encoder.py --profile default profile 1 4   # "profile": the profile's own λ

Run it after ``trichotomy reproduce --profile default`` (the profile's point is read from the
pipeline's cache; ``--run-root`` points at another one). Written: ``--out`` (markdown + csv;
default ``<figures_dir>/condition_encoder``). Nothing is asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.analysis.utility import CONDITION_ENCODER as OUT
from trichotomy_lib.evaluation.stats import mean_auroc
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release, attack_summary
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.releases import label
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import load_release
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe, row_seed


def weight(text: str) -> float | None:
    """A λ on the command line: a number >= 0, or "profile" (the profile's own setting)."""
    if text.lower() == "profile":
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"λ must be >= 0 or 'profile', got {text}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", type=weight, help="encoder.label_weight values (numbers >= 0, or 'profile')")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, default=2, help="classifier seeds per release, >= 1")
    ap.add_argument("--class", dest="with_class", action="store_true",
                    help="also the EDM class-conditional release of each λ's joint denoiser")
    ap.add_argument("--no-attack", action="store_true", help="skip the singling-out attackers (utility only)")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--out", default=None, help=f"output stem (.md, .csv); default <figures_dir>/{OUT}")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    base = config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {})
    names = ["diadm_raw"] + (["edm_class"] if args.with_class else [])
    calib = None
    rows = []
    for lam in args.weights:
        cfg = base if lam is None else config.with_settings(base, ("encoder.label_weight", lam))
        pipe = Pipeline(cfg, verbose=False)
        seed = int(pipe.cfg["seed"])
        splits = load_splits(pipe)
        train, val = splits["train"], splits["val"]
        teacher, recipe = load_classifier(pipe), classifier_recipe(pipe.cfg)
        if calib is None and not args.no_attack:   # the same calibration patients for every λ
            calib = {k: control_population(pipe.cfg["data"], train.n_patients, seed, f"calibration-{k}", f"cal{k[0]}",
                                           progress=True) for k in ("control", "weight")}
            auditor = load_verifier(pipe, "auditor")
            embed = EmbeddingCache(auditor)
        spaces = None if args.no_attack else attacker_spaces(pipe, pipe.cfg["privacy"]["attackers"])   # this λ's
        for name in names:
            release, sources = load_release(pipe, name)
            lam_text = f"{pipe.cfg['encoder'].get('label_weight', 0.0):g}" + (" (profile)" if lam is None else "")
            row = {"λ": lam_text, "release": label(name),
                   "teacher reads the labels": 100 * mean_auroc(release.labels, teacher.predict_proba(release))}
            aurocs = [100 * mean_auroc(val.labels, train_and_predict(release, val, val, recipe, row_seed(seed, i),
                                                                     progress=False)[1])
                      for i in range(args.seeds)]
            row["val mean AUROC"] = float(np.mean(aurocs))
            row["seed sd"] = float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else np.nan
            if not args.no_attack:
                r = attack_release(release, sources, train, calib["control"], auditor,
                                   {"seed": seed, "privacy": pipe.cfg["privacy"]}, heldout=calib["weight"], embed=embed,
                                   name=f"{name}_lambda{lam_text}", spaces=spaces)
                row.update(attack_summary(r))
            row["encoder + denoiser seconds"] = (pipe.seconds("encoder") or 0) + (pipe.seconds("diffusion") or 0)
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out) if args.out else config.figures_dir(base) / OUT
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    text = (f"raw releases of the pipeline; val mean AUROC and the teacher's reading in points ({args.seeds} classifier "
            "seed(s)); attackers on calibration populations\n\n"
            + to_markdown(table.set_index(["λ", "release"]), ".3f") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print()
    print(text)


if __name__ == "__main__":
    main()
