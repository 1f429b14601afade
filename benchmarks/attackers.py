"""The whole attacker suite at scale: 10⁴ released images against 10⁵ training images.

Synthetic features stand in for the four feature spaces (auditor 128-d, encoder 128-d,
defender 128-d, pixels 1024-d = 32² images): every patient has a base vector, each of its
images is the base plus noise; half of the release are noised copies of training images, half
are images of unseen patients. Each ball attacker is played with ``pso.evaluate_pso`` — exact,
chunked scoring of every predicate against every image of the training, control and held-out
populations — and timed. A second arm plays the same attackers on a random half of the
predicates and checks that each predicate's match counts are the same as in the full run (the
scoring is per predicate, so subsampling may not change them: a regression check of the
chunking), printed beside it.

    python benchmarks/attackers.py            # 10^4 predicates, 10^5 training images
    python benchmarks/attackers.py --quick    # 10^3 / 10^4 (a minute)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from trichotomy_lib import seeds
from trichotomy_lib.privacy.pso import (
    Population,
    count_matches,
    evaluate_pso,
    patient_scores,
)
from trichotomy_lib.results import to_markdown

SPACES = {"auditor ball": 128, "encoder ball": 128, "defender ball": 128, "pixel ball": 1024}


def population(n_images: int, dim: int, prefix: str, rng: np.random.Generator, base=None):
    n_patients = max(2, n_images // 3)
    if base is None:
        base = rng.normal(size=(n_patients, dim)).astype(np.float32)
    who = rng.integers(0, len(base), size=n_images)
    x = base[who] + 0.3 * rng.normal(size=(n_images, dim)).astype(np.float32)
    return torch.from_numpy(x), np.array([f"{prefix}{i}" for i in who]), base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--predicates", type=int)
    ap.add_argument("--train", type=int)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_pred = args.predicates or (1_000 if args.quick else 10_000)
    n_train = args.train or (10_000 if args.quick else 100_000)
    rows, total = [], 0.0
    for name, dim in SPACES.items():
        rng = seeds.rng(0, "benchmark", "attackers", name)
        train_x, train_p, base = population(n_train, dim, "tr", rng)
        ctrl_x, ctrl_p, _ = population(n_train, dim, "ct", rng)
        held_x, held_p, _ = population(max(2_000, n_train // 10), dim, "ho", rng)
        copies = train_x[: n_pred // 2] + 0.05 * torch.randn(n_pred // 2, dim, generator=torch.Generator().manual_seed(1))
        fresh, _, _ = population(n_pred - n_pred // 2, dim, "new", rng)
        pred = torch.cat([copies, fresh])
        src = np.concatenate([train_p[: n_pred // 2], np.array(["none"] * (n_pred - n_pred // 2))])
        pops = [Population(x, p) for x, p in ((train_x, train_p), (ctrl_x, ctrl_p), (held_x, held_p))]
        start = time.perf_counter()
        groups = np.where(src == "none", np.char.add("new", np.arange(n_pred).astype(str)), src)  # fresh: alone
        res = evaluate_pso(pred, src, *pops, None, kinds=("ball",), seed=0, groups=groups)["ball"]
        seconds = time.perf_counter() - start
        total += seconds
        # regression check: a predicate's match count does not depend on which others are scored with it
        half = np.sort(seeds.rng(0, "benchmark", "half", name).choice(n_pred, n_pred // 2, replace=False))
        t = res["threshold"]
        full, _ = count_matches(patient_scores("ball", pred, pops[0]), t)
        part, _ = count_matches(patient_scores("ball", pred[torch.from_numpy(half)], pops[0], chunk=97), t)
        agree = float((full[half] == part).mean())
        rows.append({"attacker": name, "dim": dim, "predicates": n_pred, "training images": n_train,
                     "seconds": seconds, "risk": res["risk"], "attack rate": res["attack_rate"],
                     "control rate": res["control_rate"], "match counts equal (re-chunked)": agree})
        print(f"{name}: {seconds:.1f} s", flush=True)
    print()
    print(to_markdown(pd.DataFrame(rows).set_index("attacker"), ".3f"))
    print(f"\nwhole suite: {total:.1f} s = {total / 60:.2f} min on {args.threads} threads "
          f"(target < 5 min at 10^4 x 10^5)")


if __name__ == "__main__":
    main()
