"""Benchmark: filtered generation, the project's loop vs the paper's loop shape (same models, same run).

    .venv/bin/python benchmarks/filter.py                 # profile default, 96 sources
    .venv/bin/python benchmarks/filter.py --quick         # 24 sources
    .venv/bin/python benchmarks/filter.py --profile smoke --quick --ablations

Both arms run ``privacy.filter.run_filter`` — the same hard constraint, retry schedule, seeds
stream and models (the profile's trained EMA denoiser, defender and reference classifier, taken
from the pipeline cache, trained first if missing) — on the same seeded subset of training
sources. They differ only in the loop:

* **paper shape**: one source per batch (``chunk_size=1``), all K candidates drawn before any
  is judged (``round_size = min_survivors = K``), EDM Heun with 32 steps and the guide =
  63 evaluations of each network per candidate.
* **project**: the profile's ``generate`` settings — many sources per batch, rounds of r
  candidates, stop once ``min_survivors`` survived, DPM-Solver++ with few steps.

Reported: accepted (released, rank-0) samples per second and the ratio (target >= 4x);
candidates drawn and network evaluations per accepted sample; Fréchet distance
(``evaluation.stats.frechet_distance``) of each release to the real training images in a fixed
feature space — the first 32 principal components of the real training images' pixels (PCA
fitted once on the full train split) — next to the FD of an equally sized set of *real* held-out
(val) images, which shows the noise floor at this sample size; re-identification rate against
the source by the defender at the filter's threshold (0 by construction) and by the independent auditor (Wilson 95% CI);
mean label-consistency BCE of the released samples. ``--ablations`` adds the two mixed arms
(paper shape with the fast solver, project loop with Heun 32) to split the speed-up into its
loop and solver parts. Timings are wall-clock on whatever machine runs it (torch threads as set).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.data.imageset import uint8_to_tensor
from trichotomy_lib.diffusion.sampler import network_evaluations
from trichotomy_lib.evaluation.stats import frechet_distance, wilson_interval
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy import sample_filter as flt
from trichotomy_lib.privacy.filter_audit import filter_summary
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages import generate
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.reid import load_verifier


def pca_features(real: np.ndarray, dim: int = 32):
    """A fixed feature map: projection on the first ``dim`` principal components of ``real`` pixels."""
    x = real.reshape(len(real), -1).astype(np.float64) / 255.0
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:dim].T
    return lambda images: (images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean) @ basis


def reid_rate(verifier, release_images: np.ndarray, source_images: np.ndarray, threshold: float = 0.5):
    if len(release_images) == 0:
        return 0, float("nan"), float("nan"), float("nan")
    logits = verifier.score_pairs(verifier.embed(uint8_to_tensor(source_images)),
                                  verifier.embed(uint8_to_tensor(release_images)))
    k = int((verifier.probability(logits) >= threshold).sum())
    rate, lo, hi = wilson_interval(k, len(release_images))
    return k, rate, lo, hi


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run-root", default=None, help="run root holding the trained models (default: the profile's)")
    ap.add_argument("--sources", type=int, default=None, help="number of sources (default 96; --quick 24)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ablations", action="store_true", help="also run the two mixed arms")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_sources = args.sources or (24 if args.quick else 96)
    cfg = config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {})
    pipe = Pipeline(cfg)
    g = pipe.cfg["generate"]
    k = g["filter"]["k"]
    if g["batch_size"] < k:  # one source's K candidates in one forward pass (the paper's shape)
        pipe = Pipeline(config.deep_merge(cfg, {"generate": {"batch_size": k}}))
        g = pipe.cfg["generate"]
    seed = int(cfg["seed"])
    splits = load_splits(pipe)
    train = splits["train"]
    rng = seeds.rng(seed, "benchmark", "filter", "sources")
    sources = np.sort(rng.choice(len(train), size=min(n_sources, len(train)), replace=False))
    stream = seeds.stream_id(seed, "benchmark", "filter")
    auditor = load_verifier(pipe, "auditor")
    feats = pca_features(train.images)
    f_train = feats(train.images)
    val = splits["val"].images
    fd_floor = frechet_distance(feats(val[seeds.rng(seed, "benchmark", "filter", "fd_floor").choice(len(val), min(len(sources), len(val)), replace=False)]), f_train)

    paper = {"solver": "heun", "steps": 32, "chunk_size": 1, "round_size": k, "min_survivors": k}
    project = {"solver": g["solver"], "steps": g["steps"], "chunk_size": g["filter"]["chunk_size"],
               "round_size": g["filter"]["round_size"], "min_survivors": g["filter"]["min_survivors"]}
    arms = {"paper shape (1 source/batch, all K, Heun 32)": paper,
            f"project ({project['solver']} {project['steps']}, r={project['round_size']}, m={project['min_survivors']})": project}
    if args.ablations:
        arms["paper shape, fast solver"] = {**paper, "solver": project["solver"], "steps": project["steps"]}
        arms["project loop, Heun 32"] = {**project, "solver": "heun", "steps": 32}

    rows = []
    for name, arm in arms.items():
        m = generate.filter_models(pipe, train, solver=arm["solver"], steps=arm["steps"])
        sample_fn, defender, classifier, source_probs = m.sample_fn, m.defender_fn, m.classifier_fn, m.source_probs
        params = {**m.params, **{key: arm[key] for key in ("chunk_size", "round_size", "min_survivors")}}
        start = time.perf_counter()
        res = flt.run_filter(sources, sample_fn, defender, classifier, source_probs, params, stream, progress=True,
                             copy_fn=m.copy_fn)
        seconds = time.perf_counter() - start
        summary = filter_summary(res.audit)
        best, src, _ = res.select(0)
        nfe = network_evaluations(arm["steps"], arm["solver"], params["guidance"])
        d_k, *_ = reid_rate(load_verifier(pipe, "defender"), best, train.images[src], params["threshold"])
        a_k, a_rate, a_lo, a_hi = reid_rate(auditor, best, train.images[src])
        rows.append({"arm": name, "seconds": seconds, "accepted": len(best),
                     "accepted/s": len(best) / seconds, "candidates/accepted": summary["candidates_per_accepted"],
                     "evals/accepted": summary["candidates_per_accepted"] * nfe,
                     "first-attempt flag rate": summary["first_attempt_flag_rate"], "skipped": summary["n_skipped"],
                     "FD to train (PCA-32)": frechet_distance(feats(best), f_train) if len(best) > 1 else float("nan"),
                     "defender re-id": d_k / max(len(best), 1),
                     "auditor re-id": a_rate, "auditor 95% CI": f"[{a_lo:.3f}, {a_hi:.3f}]",
                     "mean BCE": summary["mean_chosen_bce"]})
        print(f"{name}: {seconds:.1f} s, {len(best)} accepted", flush=True)
    table = pd.DataFrame(rows).set_index("arm")
    print(f"\nprofile {args.profile}, {len(sources)} sources, K={k}, guidance {g['filter']['guidance']}, "
          f"torch threads {torch.get_num_threads()}; FD of {len(sources)} real val images to train: {fd_floor:.3f}\n")
    print(to_markdown(table, ".3f"))
    base = table.iloc[0]["accepted/s"]
    for name in table.index[1:]:
        print(f"speed-up {name}: {table.loc[name, 'accepted/s'] / base:.2f}x")


if __name__ == "__main__":
    main()
