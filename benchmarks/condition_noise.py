"""Choosing the noise on DiADM's condition on data the final audit never sees.

Pseudo-conditioning hands the generator an embedding of one real image; whatever identity
that embedding carries, the sample can carry too. Noise on the condition,

    c = sqrt(D) · (e + σ·n) / ‖e + σ·n‖,   n ~ N(0, I),   e the source's embedding (‖e‖ = sqrt(D)),

keeps the coarse content (findings) and blurs the rest. This script measures, for each σ, on
the raw DiADM sampler (one draw per source, guidance g_0) of the trained ``default`` models:

* every attacker's singling-out risk, played against **calibration populations** — fresh
  PhantomCXR patients from their own seed streams (``calibration-control``,
  ``calibration-weight``), none of them in the control or weight populations of the final
  audit (notebook 06), so the σ it picks does not grade itself;
* the mean AUROC on the real **val** split of the reference classifier recipe trained on the
  samples (the test split stays for notebook 07).

    python benchmarks/condition_noise.py --profile default 0 0.5 1 1.5 2
    python benchmarks/condition_noise.py --labels both 1      # σ = 1, with and without the source's labels

``--labels`` also measures DiADM conditioned on the source's labels beside the noised embedding
(``generate.condition_labels``): "off" (the profile's DiADM, embedding only), "on", or "both".

Run it after ``trichotomy reproduce --profile default`` has trained the models (it reads the
pipeline's cache).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.data.imageset import images_to_uint8
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release, attack_summary
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.generation import noisy_conditions
from trichotomy_lib.privacy.release import make_release
from trichotomy_lib.privacy.sample_filter import guidance_at
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.encoder import load_embeddings
from trichotomy_lib.stages.generate import make_sample_fn
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sigmas", nargs="+", type=float)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--labels", choices=("off", "on", "both"), default="off",
                    help="condition on the source's labels too (generate.condition_labels): off, on, or both arms")
    args = ap.parse_args()
    # the noise is applied here, per σ: the profile's own condition_noise is switched off
    base = config.resolve(args.profile)
    pipes = {flag: Pipeline(config.deep_merge(base, {"generate": {"condition_noise": 0.0, "condition_labels": flag}}),
                            verbose=False)
             for flag in {"off": (False,), "on": (True,), "both": (False, True)}[args.labels]}
    pipe = next(iter(pipes.values()))
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    splits = load_splits(pipe)
    train = splits["train"]
    n = train.n_patients
    calib = {k: control_population(cfg["data"], n, seed, f"calibration-{k}", f"cal{k[0]}", progress=True)
             for k in ("control", "weight")}
    auditor = load_verifier(pipe, "auditor")
    embed, spaces = EmbeddingCache(auditor), attacker_spaces(pipe, cfg["privacy"]["attackers"])
    emb = load_embeddings(pipe, "train")
    sources = np.arange(len(train))
    sample_seeds = seeds.sample_seeds(seeds.stream_id(seed, "benchmark", "condition_noise"), sources)
    guidance = guidance_at(0, cfg["generate"]["filter"])
    rows = []
    for sigma, (with_labels, arm) in ((s, a) for s in args.sigmas for a in pipes.items()):
        fn = make_sample_fn(arm, "pseudo", noisy_conditions(emb, sigma, seed))
        name = f"sigma{sigma:g}" + ("_labels" if with_labels else "")
        release = make_release(name, images_to_uint8(fn(sources, sample_seeds, guidance)), sources, train)
        r = attack_release(release, sources, train, calib["control"], auditor, {"seed": seed, "privacy": cfg["privacy"]},
                           heldout=calib["weight"], embed=embed, name=name, spaces=spaces)
        _, probs = train_and_predict(release, splits["val"], splits["val"], classifier_recipe(cfg), seed, progress=False)
        auroc = auroc_table(splits["val"].labels, probs, n_boot=0).loc["mean", "auroc"]
        row = {"σ": sigma, "labels": with_labels, "val mean AUROC": auroc, **attack_summary(r)}
        rows.append(row)
        print(row, flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index(["σ", "labels"]), ".3f"))


if __name__ == "__main__":
    main()
