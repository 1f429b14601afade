"""What closes the utility gap? Downstream AUROC against the generator's training budget and guidance.

    .venv/bin/python benchmarks/generator_budget.py                      # default profile (~30 min on 2 cores
                                                                         #  after a reproduction; the 3000-step point is cached)
    .venv/bin/python benchmarks/generator_budget.py --steps 1000 3000 --guidances 2.0   # fewer points
    .venv/bin/python benchmarks/generator_budget.py --set diffusion.train.p_mean=-0.8   # + any other lever
    .venv/bin/python benchmarks/generator_budget.py --set diffusion.train.batch_size=64 diffusion.train.steps=1500
                                                        # several changes in one point (equal compute)
    .venv/bin/python benchmarks/generator_budget.py --profile smoke --steps 20 40 --guidances 2.0   # (~1 min)

Each point is the profile with one lever changed (``diffusion.train.steps``;
``generate.class_guidance`` and ``generate.filter.guidance`` together at the profile's steps; or
any settings given with one ``--set``, e.g. width, batch, learning rate, EMA length, P_mean/P_std, the
guide; width or batch with the steps scaled down compare levers at equal compute), run through
the project's own cached stages (``--run-root``, default the profile's: a point the reproduction
already computed is read, not recomputed). For every point two releases are drawn from the
same trained denoiser — EDM class-conditional (conditioned on the source's labels) and DiADM
raw (conditioned on the source's embedding, the filter's first candidate) — and one
classifier per release is trained with the reference recipe (``--seeds``, default 1: the first
of the table's seeds) and tested on the real test patients. The real row uses the same seeds,
so Δ is paired (same test patients, same seeds); intervals: the cluster bootstrap over test
patients and, with more than one seed, the seed spread (``evaluation.seeded``).

The diffusion learning-rate schedule and EMA do not depend on the total step count
(``diffusion.train.learning_rate``: warm-up, then inverse-sqrt decay; EMA half-life in images),
so a point at S steps is the S-step prefix of a longer run: the curve measures budget alone.

Printed: one row per point (mean AUROC, Δ to real with its paired interval, the diffusion
stage's seconds as the pipeline recorded them), then the slope of Δ per doubling of the steps
(least squares on log2 steps, per release) and the steps at which that line would reach
Δ = −1 — an extrapolation of the measured line, labelled as such (``analysis.utility.budget_fit``).
Written: ``--out`` (markdown + csv; default ``<figures_dir>/generator_budget``, shown by notebook
07). Nothing is asserted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import trichotomy_lib.stages  # noqa: F401  (registers the stages)
from trichotomy_lib import config
from trichotomy_lib.analysis.utility import GENERATOR_BUDGET, budget_fit, utility_rows
from trichotomy_lib.io import atomic_path, atomic_write_text
from trichotomy_lib.pipeline import Pipeline
from trichotomy_lib.releases import REAL, label
from trichotomy_lib.results import to_markdown

ROWS = ("edm_class", "diadm_raw")


def point_config(profile: str, run_root: str | None, seeds: int, *levers: tuple[str, object]) -> dict:
    """The profile with the given ``(dotted key, value)`` levers changed, ``seeds`` classifier seeds."""
    overrides: dict = {"utility": {"seeds": seeds}}
    if run_root is not None:
        overrides["run_root"] = run_root
    return config.with_settings(config.deep_merge(config.resolve(profile), overrides), *levers)


def parse_set(text: str) -> tuple[str, object]:
    """One ``--set`` argument as ``(dotted key, value)``; a malformed one stops the script, naming it."""
    try:
        return config.parse_setting(text)
    except config.ConfigError as e:
        raise SystemExit(f"--set: {e}") from None


def measure(cfg: dict, lever: str, value) -> list[dict]:
    """One table row per release of ``ROWS`` for the config ``cfg``."""
    pipe = Pipeline(cfg)
    result = utility_rows(pipe, releases=list(ROWS))
    rows = result["rows"]
    out = []
    for name in ROWS:
        r = rows[name]
        out.append({"lever": lever, "value": str(value), "steps": pipe.cfg["diffusion"]["train"]["steps"],
                    "class_guidance": pipe.cfg["generate"]["class_guidance"],
                    "filter_guidance": pipe.cfg["generate"]["filter"]["guidance"],
                    "release": label(name), "seeds": r["n_seeds"],
                    "mean_auroc": round(100 * r["auroc"]["mean"], 1),
                    "real_auroc": round(100 * rows[REAL]["auroc"]["mean"], 1),
                    "delta": round(r["diff_points"], 1), "delta_lo": round(r["diff_lo"], 1),
                    "delta_hi": round(r["diff_hi"], 1),
                    "diffusion_seconds": pipe.seconds("diffusion")})
    return out


COLUMNS = ("lever", "value", "steps", "class_guidance", "filter_guidance", "release", "seeds", "mean_auroc",
           "real_auroc", "delta", "delta_lo", "delta_hi", "diffusion_seconds")   # one row of ``measure``


def read_previous(path: str) -> pd.DataFrame:
    """The rows of an earlier run's ``.csv``; a missing file or another table stops the script, naming it."""
    try:
        before = pd.read_csv(path, dtype={"value": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SystemExit(f"--previous {path}: cannot read it as a csv ({e})") from None
    missing = [c for c in COLUMNS if c not in before.columns]
    if missing:
        raise SystemExit(f"--previous {path}: not a table of this script (no column(s) {missing})")
    return before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run-root", default=None, help="cache root (default: the profile's run_root)")
    ap.add_argument("--steps", type=int, nargs="*", default=[1000, 3000, 6000], help="diffusion training steps")
    ap.add_argument("--guidances", type=float, nargs="*", default=[2.0, 3.0],
                    help="guidance w of both releases at the profile's steps (class_guidance and filter.guidance)")
    ap.add_argument("--set", dest="levers", action="append", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                    help="one more point with these settings changed, e.g. diffusion.train.p_mean=-0.8 or "
                         "diffusion.network.channels=[48,96,192] diffusion.train.steps=1333 (repeatable; one point each)")
    ap.add_argument("--previous", default=None, metavar="CSV",
                    help="rows of an earlier run of this script (its .csv, same machine) to keep beside this run's; "
                         "a point measured again here replaces its earlier rows")
    ap.add_argument("--seeds", type=int, default=1, help="classifier seeds per row (>= 1)")
    ap.add_argument("--out", default=None,
                    help=f"output stem (.md, .csv); default <figures_dir>/{GENERATOR_BUDGET}, which notebook 07 reads")
    args = ap.parse_args()
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}")
    before = read_previous(args.previous) if args.previous else None   # a bad file stops the script before any training

    rows: list[dict] = []  # the cheap guidance points first (they reuse the profile's denoiser)
    for w in args.guidances:
        print(f"== guidance {w}", flush=True)
        rows += measure(point_config(args.profile, args.run_root, args.seeds, ("generate.class_guidance", w),
                                     ("generate.filter.guidance", w)), "guidance", w)
    for point in args.levers:
        changes = [parse_set(text) for text in point]
        lever, value = " + ".join(k for k, _ in changes), " + ".join(str(v) for _, v in changes)
        print(f"== {lever} = {value}", flush=True)
        rows += measure(point_config(args.profile, args.run_root, args.seeds, *changes), lever, value)
    for steps in args.steps:
        print(f"== steps {steps}", flush=True)
        rows += measure(point_config(args.profile, args.run_root, args.seeds, ("diffusion.train.steps", steps)),
                        "steps", steps)
    table = pd.DataFrame(rows)
    if before is not None:
        again = before.set_index(["lever", "value"]).index.isin(table.set_index(["lever", "value"]).index)
        table = pd.concat([before[~again][table.columns], table], ignore_index=True)
    fit = budget_fit(table)
    out = Path(args.out) if args.out else config.figures_dir(config.resolve(args.profile)) / GENERATOR_BUDGET
    with atomic_path(out.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    text = (to_markdown(table, ".1f", index=False) + "\n\n"
            + (to_markdown(fit, ".2f", index=False) if len(fit) else "(one budget point: no fit)") + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
