"""Choosing the identity veto's quantile on data the final audit never sees.

The defender vetoes a candidate that it matches with its *source's* patient. A pseudo-conditioned
sample can still take the identity of a neighbour of its source (the condition is noised), and
an attacker's verdict predicate then singles that other training patient out: in the committed
audit the auditor's verdict isolates training patients more often than control patients on the
filtered release (risk ≈ 0.03) while it never isolates the source. The identity veto
(``generate.filter.identity_quantile``, ``copy_veto.VerdictSpace``) vetoes a candidate that any
defender of the committee matches with *some* training patient more surely than a share q of
training images are matched with another patient's.

The other vetoes do not depend on q, so the 4-survivor release (every survivor, up to 4 per
source) is the pool: for each q this script drops the pool's candidates the identity rule vetoes,
re-picks each source's most label-consistent survivor (as the filter picks), and measures

* every attacker's singling-out risk, on ``--draws`` pairs of **calibration populations** — fresh
  PhantomCXR patients from their own seed streams, in neither the control nor the weight
  population of the final audit (notebook 06), the control ``--control-draws`` times the training
  split's size (``privacy.control_draws``) — as mean over draws and each draw's corrected upper
  bound of the strongest attacker;
* the mean AUROC on the real **val** split of the reference classifier recipe trained on it
  (``--seeds`` classifier seeds; the test split stays for notebook 07);
* the share of the pool the rule passes (the filter redraws what it vetoes, so this is its cost
  in candidates, not in sources).

    python benchmarks/identity_veto.py --profile default      # ~5 min on 2 cores

``--rule near-copy --quantiles 0.1 0.2`` sweeps the near-copy rule's quantile the same way, on the
profile's own filter (every rule on) as the pool.

``--set SECTION.KEY=VALUE ...`` reads the pool from the pipeline with those settings changed, e.g.
``--rule near-copy --quantiles --set encoder.label_weight=1``: the filter of another conditioning
encoder, on the same calibration populations (no quantile: the pool's own release alone).

Run it after ``trichotomy reproduce --profile default``. It reads the pipeline's cache with the
identity rule off (``identity_quantile: null``; the pool must not have passed it already), so the
first run computes that filter's releases (~5 min).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config, seeds
from trichotomy_lib.evaluation.classifier.consistency import label_consistency
from trichotomy_lib.evaluation.stats import auroc_table
from trichotomy_lib.evaluation.utility import train_and_predict
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.privacy.attack import attack_release
from trichotomy_lib.privacy.audit import EmbeddingCache
from trichotomy_lib.privacy.controls import control_population
from trichotomy_lib.privacy.copy_veto import CopyVeto
from trichotomy_lib.privacy.pso import ATTACKER_LABELS
from trichotomy_lib.privacy.release import make_release
from trichotomy_lib.results import to_markdown
from trichotomy_lib.stages.classifier import load_classifier
from trichotomy_lib.stages.data import load_splits
from trichotomy_lib.stages.generate import copy_veto, identity_spaces, load_release
from trichotomy_lib.stages.privacy import attacker_spaces
from trichotomy_lib.stages.reid import load_verifier
from trichotomy_lib.stages.utility import classifier_recipe

from filter_consistency import rank_per_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--quantiles", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3],
                    help="identity-veto quantiles q to try, each in (0, 0.5) (default 0.05 0.1 0.2 0.3; none: "
                         "the pool alone)")
    ap.add_argument("--set", dest="settings", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="the profile with these settings changed (e.g. encoder.label_weight=1), so the pool is "
                         "that pipeline's filter")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--draws", type=int, default=4, help="calibration population pairs (default 4)")
    ap.add_argument("--seeds", type=int, default=1, help="classifier seeds per setting (default 1)")
    ap.add_argument("--rule", choices=("identity", "near-copy"), default="identity",
                    help="the rule whose quantile is swept: the identity rule (its pool: the filter without it), or "
                         "the near-copy rule at quantiles above the profile's (its pool: the profile's filter, "
                         "every rule on; default identity)")
    ap.add_argument("--control-draws", type=int, default=None,
                    help="control populations per calibration draw, each of the training split's size "
                         "(default: the profile's privacy.control_draws)")
    args = ap.parse_args()
    if not all(0 < q < 0.5 for q in args.quantiles):
        ap.error(f"--quantiles must each be in (0, 0.5), got {args.quantiles}")
    if args.draws < 1 or args.seeds < 1 or (args.control_draws is not None and args.control_draws < 1):
        ap.error("--draws, --seeds and --control-draws must be >= 1")
    try:
        cfg = config.with_settings(config.resolve(args.profile, {"run_root": args.run_root} if args.run_root else {}),
                                   *(config.parse_setting(t) for t in args.settings))
    except config.ConfigError as e:
        ap.error(f"--set: {e}")
    if args.rule == "identity":
        cfg["generate"]["filter"]["identity_quantile"] = None   # the pool: every other veto, not this one
    pipe = Pipeline(cfg, verbose=False)
    cfg, seed = pipe.cfg, int(cfg["seed"])
    splits = load_splits(pipe)
    train, val = splits["train"], splits["val"]
    pool, src = load_release(pipe, "diadm_filter_4")
    clf = load_classifier(pipe)
    bce = label_consistency(clf.predict_proba(train)[src], clf.predict_proba(pool))
    if not args.quantiles:
        veto, dist = None, {}
    elif args.rule == "identity":
        veto = CopyVeto(identity_spaces(pipe), train.tensor(), train.patient_ids, min(args.quantiles))
    else:
        veto = copy_veto(pipe, train, identity=False)
    if veto is not None:
        dist = veto.distances(pool.tensor())
    k_ctrl = cfg["privacy"]["control_draws"] if args.control_draws is None else args.control_draws
    draws = [{k: control_population(cfg["data"], train.n_patients * (k_ctrl if k == "control" else 1), seed,
                                    f"calibration-{k}-{d}", f"c{d}{k[0]}") for k in ("control", "weight")}
             for d in range(args.draws)]
    auditor = load_verifier(pipe, "auditor")
    embed, spaces = EmbeddingCache(auditor), attacker_spaces(pipe, cfg["privacy"]["attackers"])
    clf_seeds = [seed] + [seeds.derive(seed, "utility", "classifier", s) for s in range(1, args.seeds)]
    rows = []
    print(f"calibration control populations: {k_ctrl} x {train.n_patients} patients", flush=True)
    for q in [None, *args.quantiles]:
        keep = np.ones(len(pool), bool)
        if q is not None:
            for name, t in veto.thresholds_at(q).items():
                keep &= dist[name] >= t
        idx = np.flatnonzero(keep)
        picked = idx[rank_per_source(src[idx], bce[idx]) == 0]
        release = make_release(f"identity q={q}", pool.images[picked], src[picked], train)
        row = {f"{args.rule} quantile q": "the pool" if q is None else q, "pool passes": float(keep.mean()),
               "sources released": len(picked)}
        risks, upper = [], []
        for d, calib in enumerate(draws):
            r = attack_release(release, src[picked], train, calib["control"], auditor,
                               {"seed": seed, "privacy": cfg["privacy"]}, heldout=calib["weight"], embed=embed,
                               name=f"identity-{d}", spaces=spaces)
            risks.append({name: r[f"{prefix}_risk_unclipped"] for prefix, name in ATTACKER_LABELS.items()
                          if f"{prefix}_risk_unclipped" in r})
            upper.append(r["strongest_risk_hi"])
        mean = pd.DataFrame(risks).mean()
        row.update({f"{name} (mean)": v for name, v in mean.items()})
        row["strongest upper bound, per draw"] = " ".join(f"{u:.3f}" for u in upper)
        row["strongest upper bound, mean"] = float(np.mean(upper))
        aurocs = []
        for s in clf_seeds:
            _, probs = train_and_predict(release, val, val, classifier_recipe(cfg), s, progress=False)
            aurocs.append(auroc_table(val.labels, probs, n_boot=0).loc["mean", "auroc"])
        row["val mean AUROC"] = float(np.mean(aurocs))
        rows.append(row)
        print(row, flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index(f"{args.rule} quantile q"), ".3f"))


if __name__ == "__main__":
    main()
