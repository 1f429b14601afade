"""Choosing the defender's veto rule on patients the final audit never plays on.

The filter vetoes a candidate when the defender says "same patient as the source" with
probability P >= t. t is set from how the defender scores genuine matches: it flags a share r
(``filter.veto_recall``) of the same-patient pairs of the val split. The audit then asks a
*different* model, the third-party auditor, whether the released image is still its source's
patient (P_auditor > 0.5), and wants that rate within 2 points of the class-conditional
release's, which carries no identity input. Two imperfect verifiers disagree near their
decision boundaries; a candidate one passes, the other may link. Two levers make the veto
stricter without reading the audit:

* a higher r (a lower t): the defender flags more of its own borderline matches;
* a committee: the filter's defender and its retrained replicas (the same recipe, other seeds;
  ``generate.filter.defenders``), each at its own recall-r threshold, and a candidate is
  vetoed when any of them flags it. Where a single verifier's blind spots depend on its seed,
  the union covers them.

This script measures both without the audit's instrument or its images.

* **The judge** is a stand-in auditor: the auditor's recipe trained with its own seed on its own
  fresh PhantomCXR patients (stream ``calibration-auditor``), in no split and no privacy
  population. It is a second third party, not the one notebook 06 reports.
* **The candidates** are ``--candidates`` fresh draws (their own seed stream) for every training
  image as a source (``--sources train``: the patients the generator learnt, whose memorised
  identity the filter must catch). They use the profile's condition (noise σ, its labels, label
  guidance) at the filter's first-attempt guidance g_0. ``--sources fresh`` draws for
  ``--patients`` fresh patients (stream ``calibration-veto``) instead, whom the generator never
  saw (PhantomCXR only).
* **The simulated release**: every rule includes the profile's near-copy veto. Per source, the
  survivor is chosen as the filter chooses: the most label-consistent (``filter.consistency``) of
  the first ``filter.min_survivors`` candidates that pass, in drawing order. A source whose draws
  all fail is counted, not released; the filter would redraw it.
* **The baseline** is one class-conditional EDM sample per source, on its labels.

For each rule it prints:
- the share of candidates that pass;
- the stand-in's re-identification vs source of the simulated release (P >
  ``privacy.audit_threshold``, the audit's call);
- the gap to the baseline, with a 95 % interval by a bootstrap over patients;
- the gap pooled over every passing candidate, which under-weights the sources whose candidates
  sit near the threshold: they keep releasing a survivor.

The rule to choose was fixed before this was run: the loosest one (highest pass rate) whose
gap's upper 95 % bound is at most 2 points, the audit's target.

Written: ``--out`` (markdown + csv; default ``<figures_dir>/veto_rule``, shown by notebook 06;
``--sources fresh``: ``<figures_dir>/veto_rule_fresh``).

    python benchmarks/veto_rule.py --profile default
    python benchmarks/veto_rule.py --sources fresh --patients 800

Run it after ``trichotomy reproduce --profile default`` has trained the models (it reads the
pipeline's cache; the replicas are trained on first use). The stand-in auditor (about 7 min on
2 cores) is kept in ``<run_root>/<profile>/benchmark_veto_rule/``, under its recipe's stage key,
and reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.analysis.privacy import VETO_RULE
from trichotomy_lib.data.imageset import images_to_uint8, uint8_to_tensor
from trichotomy_lib.diffusion.conditional import conditional_sampler
from trichotomy_lib.evaluation.classifier.consistency import label_consistency
from trichotomy_lib.evaluation.stats import wilson_interval
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.generation import noisy_conditions
from trichotomy_lib.privacy.reid_model import Verifier
from trichotomy_lib.privacy.reid_train import sample_pairs
from trichotomy_lib.privacy.roles import auditor_split, val_pairs_seed, veto_threshold
from trichotomy_lib.privacy.sample_filter import guidance_at, verifier_defender_fn
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.diffusion import load_codec, load_denoiser, load_guide
from trichotomy_lib.stages.encoder import load_embeddings, load_encoder
from trichotomy_lib.stages.generate import copy_veto, load_release, sampling_precision
from trichotomy_lib.stages.reid import fit_role, load_defender_replicas, load_verifier, role_params


def sampler(pipe: Pipeline, mode: str, conditions: np.ndarray, labels: np.ndarray | None):
    g = pipe.cfg["generate"]
    return conditional_sampler(load_denoiser(pipe, mode), conditions, "labels" if mode == "class" else "embedding",
                               labels=labels, guide_net=load_guide(pipe, mode, g["guide"]), codec=load_codec(pipe),
                               solver=g["solver"], steps=g["steps"], batch_size=g["batch_size"], progress=True,
                               precision=sampling_precision(pipe),
                               label_guidance=g["label_guidance"] if labels is not None else None)


def stand_in_auditor(pipe: Pipeline) -> Verifier:
    """The auditor's recipe, its own seed, on its own fresh patients (trained once, then reused)."""
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    out = pipe.run_dir / "benchmark_veto_rule" / f"stand_in_auditor-{pipe.key('reid_auditor')}"  # its recipe's key
    if not (out / "verifier.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        pool = control_population(cfg["data"], int(cfg["reid"]["auditor_patients"]), seed, "calibration-auditor",
                                  "cala", train_like=False, progress=True)
        own = seeds.derive(seed, "benchmark", "veto_rule", "auditor")
        train, val = auditor_split(pool, own)
        fit_role(train, val, sample_pairs(val.patient_ids, seeds.derive(own, "val_pairs"), split="stand-in val"),
                 role_params(cfg["reid"], "auditor"), "auditor", own, out, "stand-in auditor")
    return Verifier.load(out)


def vs_source(judge: Verifier, images: np.ndarray, sources_set, sources: np.ndarray, threshold: float) -> np.ndarray:
    """The audit's vs-source call: P_judge(sample, its source image) > ``privacy.audit_threshold``."""
    e = judge.embed(uint8_to_tensor(images))
    e_src = judge.embed(sources_set.tensor())[torch.from_numpy(sources)]
    return judge.probability(judge.score_pairs(e, e_src)).numpy() > threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--sources", choices=("train", "fresh"), default="train",
                    help="the training images (default) or a fresh calibration population's")
    ap.add_argument("--patients", type=int, default=800, help="with --sources fresh: its patients (default 800)")
    ap.add_argument("--candidates", type=int, default=6, help="DiADM candidates per source image (default 6)")
    ap.add_argument("--recalls", type=float, nargs="+", default=[0.99, 0.995, 0.999])
    ap.add_argument("--n-boot", type=int, default=20000)
    ap.add_argument("--out", default=None,
                    help=f"output stem (.md, .csv); default <figures_dir>/{VETO_RULE}, which notebook 06 reads "
                         f"(with --sources fresh: <figures_dir>/{VETO_RULE}_fresh)")
    args = ap.parse_args()
    pipe = Pipeline(config.resolve(args.profile), verbose=False)
    cfg, seed = pipe.cfg, int(pipe.cfg["seed"])
    g = cfg["generate"]
    judge = stand_in_auditor(pipe)
    if args.sources == "train":
        pool = load_splits(pipe)["train"]
        emb = load_embeddings(pipe, "train")
    else:
        pool = control_population(cfg["data"], args.patients, seed, "calibration-veto", "calv", progress=True)
        emb = load_encoder(pipe).embed(pool.tensor()).numpy().astype(np.float32)
    sources = np.arange(len(pool))
    labels = pool.labels.astype(np.float32)
    print(f"sources: {args.sources}, {pool.n_patients} patients, {len(pool)} images", flush=True)

    # the candidates: the profile's DiADM condition on each source, fresh seeds
    cond = noisy_conditions(emb, g["condition_noise"], seeds.derive(seed, "benchmark", "veto_rule", "noise"))
    pseudo = sampler(pipe, "pseudo", cond, labels if g["condition_labels"] else None)
    g0 = guidance_at(0, g["filter"])
    cand_src = np.tile(sources, args.candidates)
    cand = np.concatenate([images_to_uint8(pseudo(sources, seeds.sample_seeds(
        seeds.stream_id(seed, "benchmark", "veto_rule", "diadm"), sources, 0, c), g0)) for c in range(args.candidates)])
    edm = images_to_uint8(sampler(pipe, "class", labels, None)(
        sources, seeds.sample_seeds(seeds.stream_id(seed, "benchmark", "veto_rule", "edm"), sources), g["class_guidance"]))

    # the defenders' probabilities against every scan of the source's patient, and their thresholds;
    # the near-copy rule (the profile's quantile, against the training images) vetoes under every rule
    splits = load_splits(pipe)
    defenders = [load_verifier(pipe, "defender"), *load_defender_replicas(pipe)]
    probs, thresholds = [], {}
    for d in defenders:
        fn = verifier_defender_fn(d, pool.tensor(), patient_ids=pool.patient_ids)
        probs.append(fn(cand_src, uint8_to_tensor(cand)))
        for r in args.recalls:
            thresholds.setdefault(r, []).append(veto_threshold(d, splits["val"], r, val_pairs_seed(seed)))
    probs = np.stack(probs)  # (defenders, candidates)
    near_copy = copy_veto(pipe, splits["train"], identity=False)
    copy = np.zeros(len(cand), bool) if near_copy is None else near_copy.ratio(uint8_to_tensor(cand)) < 1.0

    # the filter's choice among survivors: label consistency with the source (filter.consistency)
    clf = load_classifier(pipe)
    targets = (clf.predict_proba(pool.tensor()) if g["filter"]["consistency"] == "prediction"
               else pool.labels.astype(np.float64))
    bce = label_consistency(targets[cand_src], clf.predict_proba(uint8_to_tensor(cand))).reshape(args.candidates, -1)

    audit_t = float(cfg["privacy"]["audit_threshold"])
    reid = vs_source(judge, cand, pool, cand_src, audit_t)
    base = vs_source(judge, edm, pool, sources, audit_t)
    pid = np.asarray(pool.patient_ids).astype(str)
    _, patient = np.unique(pid, return_inverse=True)  # per source image
    n_patients = patient.max() + 1
    rng = np.random.default_rng(seeds.derive(seed, "benchmark", "veto_rule", "boot"))
    weights = np.stack([np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
                        for _ in range(args.n_boot)]).astype(np.float32)  # (resamples, patients)
    per_patient = lambda x: np.bincount(patient, weights=np.asarray(x, float), minlength=n_patients)  # noqa: E731
    base_rate = (weights @ per_patient(base)) / (weights @ per_patient(np.ones(len(base))))

    def released(passed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(has a survivor, its re-id) per source, the survivor chosen as the filter chooses: the
        most label-consistent of the first ``filter.min_survivors`` that pass, in drawing order."""
        passed = passed.reshape(args.candidates, -1)
        first = passed & (np.cumsum(passed, axis=0) <= g["filter"]["min_survivors"])
        pick = np.where(first, bce, np.inf).argmin(axis=0)
        return first.any(axis=0), reid.reshape(args.candidates, -1)[pick, sources]

    rows = []
    for r in args.recalls:
        t = np.asarray(thresholds[r])[:, None]
        for name, members in (("defender", 1), (f"committee of {len(defenders)}", len(defenders))):
            passed = ~((probs[:members] >= t[:members]).any(axis=0) | copy)
            has, hit = released(passed)
            k, n = int(hit[has].sum()), int(has.sum())
            rate, lo, hi = wilson_interval(k, n) if n else (np.nan, np.nan, np.nan)
            gaps = (weights @ per_patient(has & hit)) / np.maximum(weights @ per_patient(has), 1) - base_rate
            glo, ghi = 100 * np.quantile(gaps, [0.025, 0.975])
            pooled = reid[passed].mean() if passed.any() else np.nan
            rows.append({"recall r": r, "rule": name, "thresholds": " / ".join(f"{x:.3f}" for x in t[:members, 0]),
                         "pass rate": passed.mean(), "sources without a survivor": int((~has).sum()),
                         "pooled gap (points)": 100 * (pooled - base.mean()),
                         "re-id vs source": rate, "re-id lo": lo, "re-id hi": hi, "re-id k / n": f"{k} / {n}",
                         "gap (points)": 100 * (rate - base.mean()), "gap lo": glo, "gap hi": ghi})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows).set_index(["recall r", "rule"])
    reference = ""
    if args.sources == "train":  # after the choice, and not part of it: the two auditors on the same images
        rel = {name: load_release(pipe, name) for name in ("diadm_filter", "edm_class")}
        read = {name: vs_source(judge, images.images, pool, src, audit_t).mean() for name, (images, src) in rel.items()}
        reference = (f" For reference (read after the choice, not part of it): the stand-in reads the release notebook "
                     f"06 audits (diadm_filter) at {read['diadm_filter']:.4f} against {read['edm_class']:.4f} for "
                     f"edm_class, {100 * (read['diadm_filter'] - read['edm_class']):+.1f} points.")
    ok = table[table["gap hi"] <= 2.0]
    chosen = ok["pass rate"].idxmax() if len(ok) else None
    text = (f"stand-in auditor (its own {cfg['reid']['auditor_patients']} fresh patients and seed); {args.candidates} "
            f"fresh candidate(s) per {'training' if args.sources == 'train' else 'fresh'} image at g_0 = {g0:g}; "
            f"class-conditional baseline {base.mean():.4f} ({int(base.sum())} / {len(base)}), all candidates before "
            f"any veto {reid.mean():.4f}; the near-copy rule vetoes {copy.mean():.3f} of them under every rule; gap in "
            f"points, 95 % interval by a bootstrap over patients ({args.n_boot} resamples); chosen (the loosest rule "
            f"whose gap's upper bound is <= 2 points): "
            + ("none of these" if chosen is None else f"{chosen[1]}, r = {chosen[0]:g}") + "." + reference + "\n\n"
            + to_markdown(table, ".3f") + "\n")
    out = Path(args.out) if args.out else config.figures_dir(cfg) / (VETO_RULE if args.sources == "train"
                                                                     else f"{VETO_RULE}_fresh")
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.reset_index().to_csv(tmp, index=False)
    atomic_write_text(out.with_suffix(".md"), text)
    print()
    print(text)


if __name__ == "__main__":
    main()
