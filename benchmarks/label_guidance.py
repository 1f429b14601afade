"""Choosing the labels' own guidance scale w_y on data the final audit never sees.

A DiADM sample carries its source's labels, but the generator does not always draw what they say
(``benchmarks/utility_gap.py``: most of the utility gap is label noise). Given a joint network
conditioned on an embedding e and labels y, the labels can be guided on their own
(InstructPix2Pix's two scales, ``sampler.guided_denoiser``):

    D = D(∅) + w · (D(e) − D(∅)) + w_y · (D(e, y) − D(e))

This script measures, for each w_y, on the raw DiADM sampler (one draw per source, the filter's
first guidance w = g_0, the profile's condition) of the trained ``default`` models:

* how well the **teacher** (the reference classifier trained on the real training split) reads
  the samples' own labels from their images (mean AUROC against the labels they carry);
* the mean AUROC on the real **val** split of the reference recipe trained on the samples
  (``--seeds`` classifier seeds; the test split stays for notebook 07);
* every attacker's singling-out risk against **calibration populations** (fresh PhantomCXR
  patients from their own seed streams, none in the final audit's control or weight
  populations), so the w_y it picks does not grade itself.

    python benchmarks/label_guidance.py --profile default none 3 6 10    # none: w_y = w (one scale)
    python benchmarks/label_guidance.py --class-guidance 1.4 3 6 10 --no-attack none

``--class-guidance`` adds the EDM class-conditional baseline at each of those w (its labels are its
only condition, so w is its label guidance): the baseline gets the same lever.

``--mix`` asks whether a *spread* of scales teaches more than one: each source's w_y is drawn
uniformly from the listed values (its own seed stream), with the same sample seeds as the
single-scale arms, so plainly and subtly drawn findings sit side by side in one release:

    python benchmarks/label_guidance.py --no-attack --seeds 3 8 --mix 6,8,10 --mix 4,8,12

Written: ``--out`` (markdown + csv; default ``<figures_dir>/label_guidance``, shown by notebook 07).

Run it after ``trichotomy reproduce --profile default`` (it reads the pipeline's cache;
``--run-root`` points at another one). Nothing is asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.analysis.utility import LABEL_GUIDANCE
from trichotomy_lib.data.imageset import images_to_uint8
from trichotomy_lib.evaluation.stats import mean_auroc
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release, attack_summary
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.release import make_release
from trichotomy_lib.privacy.sample_filter import guidance_at
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.encoder import load_embeddings
from trichotomy_lib.stages.generate import make_sample_fn
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe, row_seed


def scale(text: str) -> float | None:
    """A w_y on the command line: a number >= 0, or "none" (one scale for both conditions)."""
    if text.lower() == "none":
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"w_y must be >= 0 or 'none', got {text}")
    return value


def scale_mix(text: str) -> tuple[float, ...]:
    """A ``--mix`` on the command line: two or more w_y values >= 0, comma-separated ("4,8,12")."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix takes comma-separated numbers, got {text!r}") from None
    if len(values) < 2 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"--mix needs two or more w_y values >= 0, got {text!r}")
    return values


def mixed_sampler(samplers: dict, assigned: np.ndarray):
    """``fn(sources, seeds, w)`` drawing each source with the sampler of its assigned w_y.

    ``samplers``: w_y → sampler; ``assigned``: (n_sources,) the w_y of each source. A sample is a
    function of its seed alone, so each source's image is the one its scale's arm would draw."""
    def fn(sources, sample_seeds, w):
        sources, sample_seeds = np.asarray(sources), np.asarray(sample_seeds)
        rows = [np.flatnonzero(assigned[sources] == w_y) for w_y in samplers]
        parts = [sample(sources[r], sample_seeds[r], w) for sample, r in zip(samplers.values(), rows) if len(r)]
        return torch.cat(parts)[torch.from_numpy(np.argsort(np.concatenate(rows)))]   # back in the sources' order
    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scales", nargs="*", type=scale, help="w_y values (numbers >= 0, or 'none')")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, default=1, help="classifier seeds per w_y, >= 1")
    ap.add_argument("--guidance", type=float, default=None, help="w (default: the filter's first guidance g_0)")
    ap.add_argument("--class-guidance", nargs="*", type=float, default=[],
                    help="also the EDM class-conditional release at each of these guidance weights")
    ap.add_argument("--mix", action="append", type=scale_mix, default=[], metavar="W1,W2,...",
                    help="one more DiADM arm whose sources each draw w_y uniformly from these values (repeatable)")
    ap.add_argument("--no-attack", action="store_true", help="skip the singling-out attackers (utility only)")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--out", default=None,
                    help=f"output stem (.md, .csv); default <figures_dir>/{LABEL_GUIDANCE}, which notebook 07 reads")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")
    # w_y is set here, per run: the profile's own generate.label_guidance is switched off
    cfg = config.deep_merge(config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {}),
                            {"generate": {"label_guidance": None}})
    if not cfg["generate"]["condition_labels"]:
        ap.error(f"profile {args.profile!r} does not condition DiADM on labels (generate.condition_labels: false)")
    pipe = Pipeline(cfg, verbose=False)
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    splits = load_splits(pipe)
    train, val = splits["train"], splits["val"]
    teacher, recipe = load_classifier(pipe), classifier_recipe(cfg)
    emb = load_embeddings(pipe, "train")
    sources = np.arange(len(train))
    sample_seeds = seeds.sample_seeds(seeds.stream_id(seed, "benchmark", "label_guidance"), sources)
    guidance = guidance_at(0, cfg["generate"]["filter"]) if args.guidance is None else args.guidance
    if not args.no_attack:
        calib = {k: control_population(cfg["data"], train.n_patients, seed, f"calibration-{k}", f"cal{k[0]}",
                                       progress=True) for k in ("control", "weight")}
        auditor = load_verifier(pipe, "auditor")
        embed, spaces = EmbeddingCache(auditor), attacker_spaces(pipe, cfg["privacy"]["attackers"])
    # (generator, name, the scale on the labels: w_y, or w where one scale serves both, sampler, w)
    arms = [("DiADM", "w_y=" + ("w" if w_y is None else f"{w_y:g}"), guidance if w_y is None else w_y,
             make_sample_fn(pipe, "pseudo", emb, progress=True, label_guidance=w_y), guidance) for w_y in args.scales]
    for mix in args.mix:   # each source's w_y from its own stream; the same sample seeds as every arm
        assigned = seeds.rng(seed, "benchmark", "label_guidance_mix", *mix).choice(np.asarray(mix), len(sources))
        samplers = {w_y: make_sample_fn(pipe, "pseudo", emb, progress=True, label_guidance=w_y) for w_y in mix}
        arms.append(("DiADM", "w_y~{" + ",".join(f"{w_y:g}" for w_y in mix) + "}", float(np.mean(mix)),
                     mixed_sampler(samplers, assigned), guidance))
    arms += [("EDM class-conditional", f"w={w:g}", w, make_sample_fn(pipe, "class", train.labels.astype(np.float32),
                                                                     progress=True), w) for w in args.class_guidance]
    if not arms:
        ap.error("nothing to measure: give w_y values, --mix and/or --class-guidance")
    rows = []
    for generator, name, scale_on_labels, fn, w in arms:
        release = make_release(name, images_to_uint8(fn(sources, sample_seeds, w)), sources, train)
        row = {"generator": generator, "guidance": name, "scale": scale_on_labels,
               "teacher reads the labels": 100 * mean_auroc(release.labels, teacher.predict_proba(release))}
        aurocs = []
        for i in range(args.seeds):
            _, probs = train_and_predict(release, val, val, recipe, row_seed(seed, i), progress=False)
            aurocs.append(100 * mean_auroc(val.labels, probs))
        row["val mean AUROC"] = float(np.mean(aurocs))
        row["seed sd"] = float(np.std(aurocs, ddof=1)) if len(aurocs) > 1 else np.nan
        if not args.no_attack:
            r = attack_release(release, sources, train, calib["control"], auditor,
                               {"seed": seed, "privacy": cfg["privacy"]}, heldout=calib["weight"], embed=embed,
                               name=name, spaces=spaces)
            row.update(attack_summary(r))
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out) if args.out else config.figures_dir(cfg) / LABEL_GUIDANCE
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    text = (f"raw sampler, one draw per source, DiADM at w = {guidance:g}; val mean AUROC and the teacher's reading "
            f"in points ({args.seeds} classifier seed(s)); attackers on calibration populations\n\n"
            + to_markdown(table.set_index(["generator", "guidance"]), ".3f") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print()
    print(text)


if __name__ == "__main__":
    main()
