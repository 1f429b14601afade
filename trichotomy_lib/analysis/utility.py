"""Notebook 07's tables: train on each release, test on real; fidelity and diversity; cross-site."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import seeds
from ..config import figures_dir
from ..data.imageset import LABELS, ImageSet, images_to_uint8
from ..evaluation.fidelity import FEATURE_SPACE_NOTE, equal_size, fidelity_row, penultimate_features
from ..evaluation.stats import frechet_distance
from ..evaluation.seeded import seeded_auroc
from ..evaluation.utility import (cross_table, is_estimable, mark_not_estimable, not_estimable, utility_row,
                                  utility_table)
from ..pipeline import Pipeline
from ..releases import FILTERED, REAL, RELEASES, label
from ..stages.data import load_splits
from ..stages.fidelity import load_feature_net, load_fidelity
from ..stages.utility import load_cross_site, load_test_probs, load_training_info

__all__ = ["utility_rows", "utility_main", "utility_differences", "utility_headline", "release_size_curve", "utility_fidelity", "utility_cross_site",
           "feature_space_note", "sample_fd", "GENERATOR_BUDGET", "budget_fit", "load_generator_budget",
           "UTILITY_GAP", "gap_decomposition", "load_utility_gap", "LABEL_GUIDANCE", "load_label_guidance", "CONDITION_ENCODER",
           "DATA_SCALE", "data_fit", "load_data_scale"]

GENERATOR_BUDGET = "generator_budget"  # <figures_dir>/generator_budget.csv, written by benchmarks/generator_budget.py
UTILITY_GAP = "utility_gap"            # <figures_dir>/utility_gap.csv, written by benchmarks/utility_gap.py
LABEL_GUIDANCE = "label_guidance"      # <figures_dir>/label_guidance.csv, written by benchmarks/label_guidance.py
CONDITION_ENCODER = "condition_encoder"  # <figures_dir>/condition_encoder.csv, written by benchmarks/condition_encoder.py
DATA_SCALE = "data_scale"              # <figures_dir>/data_scale.csv, written by benchmarks/data_scale.py


def utility_rows(pipe: Pipeline, releases=None) -> dict:
    """{"rows": {row: utility_row}, "info": {row: info.json}} for "real" + ``releases`` (default
    ``utility.releases``; each trained on first use). Intervals: ``utility.n_boot`` resamples of
    the test *patients*, seeded by the profile's seed (the same resamples and the same classifier
    seeds for every row: paired), combined with the spread over ``utility.seeds``. A row whose
    training set has no image of some finding is marked not estimable (``note``)."""
    u = pipe.cfg["utility"]
    test = load_splits(pipe, mmap=True)["test"]
    boot_seed = seeds.derive(int(pipe.cfg["seed"]), "utility", "bootstrap")
    names = [REAL, *(u["releases"] if releases is None else releases)]
    probs = {row: load_test_probs(pipe, row) for row in names}
    info = {row: load_training_info(pipe, row) for row in names}
    rows = {}
    for row, p in probs.items():
        r = utility_row(test.labels, p, None if row == REAL else probs[REAL], u["n_boot"], boot_seed, u["level"],
                        groups=test.patient_ids)
        missing = not_estimable(info[row].get("label_counts", np.ones(len(LABELS))))
        if missing:
            mark_not_estimable(r, missing)
        rows[row] = r
    baseline = "edm_class"
    for row in names:  # paired difference to the class-conditional baseline (same patients, same seeds)
        if row not in (REAL, baseline) and baseline in probs:
            d = seeded_auroc(test.labels, probs[row], probs[baseline], list(LABELS), groups=test.patient_ids,
                             n_boot=u["n_boot"], seed=boot_seed, level=u["level"])
            rows[row]["vs_baseline"] = {"baseline": baseline, "diff_points": 100 * d["diff"],
                                        "diff_lo": 100 * d["diff_lo"], "diff_hi": 100 * d["diff_hi"]}
    return {"rows": rows, "info": info}


def utility_main(result: dict) -> pd.DataFrame:
    """The paper's main table from ``utility_rows`` (display names; AUROC in points)."""
    rows = result["rows"]
    return utility_table(rows, {row: label(row) for row in rows}, {k: v["n_train"] for k, v in result["info"].items()})


def utility_differences(result: dict) -> pd.DataFrame:
    """Δ mean AUROC to real (points, paired 95 % interval over test patients and seeds) per
    release, each seed's Δ, and whether the interval excludes a loss of more than 1 point (the
    paper's headline). Not-estimable rows are left out."""
    rows = {label(n): {"Δ (points)": r["diff_points"], "lo": r["diff_lo"], "hi": r["diff_hi"],
                       "Δ per seed": ", ".join(f"{d:+.1f}" for d in r.get("diff_per_seed", [r["diff_points"]])),
                       "CI excludes a loss > 1 point": bool(r["diff_lo"] > -1.0)}
            for n, r in result["rows"].items() if n != REAL and is_estimable(r)}
    return pd.DataFrame(rows).T


def utility_headline(result: dict, release: str = "diadm_filter", baseline: str = "edm_class") -> str:
    """The paper's headline claim, measured: one sentence on ``release`` against real data and
    against ``baseline``, with the paired intervals (test patients × seeds)."""
    rows = result["rows"]
    r = rows[release]
    if not is_estimable(r):
        return f"{label(release)}: {r['note']}."
    within = r["diff_lo"] > -1.0
    verdict = ("within 1 AUROC point of real data (the interval excludes a larger loss)" if within else
               "not shown to be within 1 point of real data" + (" (its interval reaches below −1)"
                                                               if r["diff_hi"] > -1.0 else
                                                               " (the whole interval lies below −1)"))
    text = (f"{label(release)} scores {100 * r['auroc']['mean']:.1f} mean AUROC against real data's "
            f"{100 * rows[REAL]['auroc']['mean']:.1f}: Δ {r['diff_points']:+.1f} points "
            f"[{r['diff_lo']:+.1f}, {r['diff_hi']:+.1f}] over {r['n_seeds']} seeds, {verdict}")
    vs = r.get("vs_baseline")
    if vs and vs["baseline"] == baseline and is_estimable(rows[baseline]):
        sign = "above" if vs["diff_lo"] > 0 else "below" if vs["diff_hi"] < 0 else "not separable from"
        text += (f"; {vs['diff_points']:+.1f} points [{vs['diff_lo']:+.1f}, {vs['diff_hi']:+.1f}] against "
                 f"{label(baseline)} ({100 * rows[baseline]['auroc']['mean']:.1f}): {sign} it")
    return text + "."


def release_size_curve(result: dict) -> pd.DataFrame:
    """The filtered releases with 1, 2, 4 survivors per source (``releases.FILTERED``, one filter
    run), smallest first: size, mean AUROC [interval over test patients × seeds] and the paired
    Δ to real, with where that interval puts the release ("above real", "below real" or "not
    separable from real"). Releases without a row, or not estimable, are left out."""
    rows, out = result["rows"], {}
    for name in sorted((n for n in FILTERED if n in rows and is_estimable(rows[n])), key=lambda n: RELEASES[n].survivors):
        r = rows[name]
        where = "above real" if r["diff_lo"] > 0 else "below real" if r["diff_hi"] < 0 else "not separable from real"
        out[label(name)] = {"survivors per source": RELEASES[name].survivors, "n_train": result["info"][name]["n_train"],
                            "mean AUROC": 100 * r["auroc"]["mean"], "lo": 100 * r["lo"]["mean"],
                            "hi": 100 * r["hi"]["mean"], "Δ to real": r["diff_points"], "Δ lo": r["diff_lo"],
                            "Δ hi": r["diff_hi"], "against real": where}
    return pd.DataFrame.from_dict(out, orient="index")


def utility_fidelity(pipe: Pipeline) -> pd.DataFrame:
    """One row per release (+ the whole real test split): FD to train, IRS_α, IRS_∞ with bounds,
    adjusted IRS with bounds; each release against real test images subsampled to its own size
    (``n_reference``; ``fd_test`` and ``irs_real_inf`` are that reference's). Raw numbers."""
    u = pipe.cfg["utility"]
    rows = {label(name): load_fidelity(pipe, name) for name in u["releases"]}
    _, train_f, test_f = load_feature_net(pipe)
    ref = fidelity_row(test_f, train_f, test_f, u["alpha_e"], equal_n=False)
    rows["real test split (whole)"] = {**ref, "fd": ref["fd_test"]}
    cols = ["n", "n_reference", "fd", "fd_test", "irs_alpha", "irs_inf", "irs_inf_lo", "irs_inf_hi", "at_cap",
            "irs_adjusted", "irs_adjusted_lo", "irs_adjusted_hi", "irs_real_inf"]
    df = pd.DataFrame.from_dict(rows, orient="index")[cols]
    df.index.name = "release"
    return df


def utility_cross_site(pipe: Pipeline) -> pd.DataFrame:
    """Mean AUROC (points), rows = training dataset, columns = test dataset."""
    res = load_cross_site(pipe)
    return cross_table({tr: {te: v["auroc"] for te, v in row.items()} for tr, row in res["auroc"].items()})


def feature_space_note(pipe: Pipeline) -> str:
    return FEATURE_SPACE_NOTE[pipe.cfg["utility"]["features"]]


def sample_fd(pipe: Pipeline, samples) -> dict:
    """Fréchet distance of generated images ((N, 1, H, W) in [-1, 1]) to the real training split in
    the fidelity feature space (an independently seeded classifier: neither the
    pseudo-conditioning encoder nor the auditor), beside real test images' own distance at the
    same size (``fd_test`` over ``n_test`` images, the floor at that n: FD grows as n shrinks)."""
    images = images_to_uint8(samples)
    n = len(images)
    as_set = ImageSet(images, np.zeros((n, len(LABELS)), np.uint8), np.full(n, "sample"),
                      np.array([f"sample_{i}" for i in range(n)]))
    feat_clf, train_f, test_f = load_feature_net(pipe)
    synth_f, test_f = equal_size(penultimate_features(feat_clf, as_set), test_f,
                                 seeds.rng(int(pipe.cfg["seed"]), "fidelity", "sample_fd"))
    return {"n": len(synth_f), "fd": frechet_distance(synth_f, train_f), "fd_test": frechet_distance(test_f, train_f),
            "n_test": len(test_f)}


def _doubling_line(x: np.ndarray, delta: np.ndarray) -> dict:
    """Δ ≈ a + b·log2(x) by least squares over points ``(x, delta)``: b (points per doubling of x),
    the slope between the two largest x alone (a curve that flattens has a last slope well below b,
    and then the line over-promises) and the x at which the line reaches Δ = −1 (an extrapolation;
    None where the line does not rise)."""
    order = np.argsort(x)
    x, delta = np.log2(np.asarray(x, float)[order]), np.asarray(delta, float)[order]
    b, a = np.polyfit(x, delta, 1)
    last = (delta[-1] - delta[-2]) / (x[-1] - x[-2])
    return {"b": float(b), "last": float(last), "reach": None if b <= 0 else int(round(2 ** ((-1.0 - a) / b)))}


def budget_fit(table: pd.DataFrame) -> pd.DataFrame:
    """Per release of a ``benchmarks/generator_budget.py`` table: the least-squares line
    Δ ≈ a + b·log2(steps) over its budget points (``lever == "steps"``, ``_doubling_line``): b (points
    per doubling of the denoiser's training steps), the slope between the two largest budgets, and the
    steps at which the line reaches Δ = −1 — an extrapolation of the measured line, None where the line
    does not rise — with that many steps at the fastest measured seconds per step (the
    least-contended training of the table). Releases with fewer than 2 budget points are left out."""
    fits = []
    for release, part in table[table["lever"] == "steps"].groupby("release", sort=False):
        if part["steps"].nunique() < 2:
            continue
        line = _doubling_line(part["steps"].to_numpy(float), part["delta"].to_numpy(float))
        rate = (part["diffusion_seconds"] / part["steps"]).dropna()
        hours = None if line["reach"] is None or rate.empty else round(line["reach"] * float(rate.min()) / 3600, 1)
        fits.append({"release": release, "budget points": len(part), "Δ per doubling of steps (points)": round(line["b"], 2),
                     "Δ per doubling over the last two points": round(line["last"], 2),
                     "steps where the line reaches Δ = −1 (extrapolated)": line["reach"],
                     "denoiser hours at the measured s/step": hours})
    return pd.DataFrame(fits)


def data_fit(table: pd.DataFrame) -> pd.DataFrame:
    """Per series and release of a ``benchmarks/data_scale.py`` table: the least-squares line
    Δ ≈ a + b·log2(patients) (``_doubling_line``): b (points per doubling of the training patients),
    the slope between the two largest points, the patients at which the line reaches Δ = −1 (an
    extrapolation of the measured line, None where it does not rise), and the real row's own gain per
    doubling (the reference learns from more patients too). Series (``series``: the denoiser at the
    profile's steps, or at steps scaled with the patients) with fewer than 2 points are left out."""
    fits = []
    for (series, release), part in table.groupby(["series", "release"], sort=False):
        if part["patients"].nunique() < 2:
            continue
        x = part["patients"].to_numpy(float)
        line = _doubling_line(x, part["delta"].to_numpy(float))
        real = _doubling_line(x, part["real_auroc"].to_numpy(float))
        fits.append({"series": series, "release": release, "points": len(part),
                     "Δ per doubling of patients (points)": round(line["b"], 2),
                     "Δ per doubling over the last two points": round(line["last"], 2),
                     "patients where the line reaches Δ = −1 (extrapolated)": line["reach"],
                     "real row per doubling (points)": round(real["b"], 2)})
    return pd.DataFrame(fits)


def load_data_scale(cfg: dict) -> pd.DataFrame | None:
    """The profile's measured data-scale table (``<figures_dir>/data_scale.csv``, from
    ``benchmarks/data_scale.py --profile <profile>``), or None when it was not measured."""
    return _benchmark_table(cfg, DATA_SCALE, {"series", "patients", "train_images", "steps", "release", "seeds", "mean_auroc",
                                              "real_auroc", "delta", "delta_lo", "delta_hi"})


def load_generator_budget(cfg: dict) -> pd.DataFrame | None:
    """The profile's measured generator-budget table (``<figures_dir>/generator_budget.csv``, from
    ``benchmarks/generator_budget.py --profile <profile>``), or None when it was not measured."""
    return _benchmark_table(cfg, GENERATOR_BUDGET, {"lever", "value", "steps", "release", "mean_auroc", "real_auroc",
                                                    "delta", "delta_lo", "delta_hi", "diffusion_seconds"})


def _benchmark_table(cfg: dict, stem: str, required: set) -> pd.DataFrame | None:
    """``<figures_dir>/<stem>.csv`` as written by ``benchmarks/<stem>.py``, or None when it was not
    measured; a file without one of the ``required`` columns is named with the script to rerun."""
    path = figures_dir(cfg) / f"{stem}.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; rerun benchmarks/{stem}.py")
    return table


def gap_decomposition(table: pd.DataFrame) -> pd.DataFrame:
    """Where each release's utility gap sits, from ``benchmarks/utility_gap.py``'s table (one row
    per training set, the real one labelled ``label(REAL)``; columns ``labels`` and ``teacher``:
    val mean AUROC in points when trained on the carried labels / on the reference classifier's
    outputs). Per release: the gap to real with labels on both sides, the part left when both
    sides learn the teacher's outputs (in the images: the teacher's reading transfers less well
    from them), and the rest (label noise: samples that do not show what their labels say)."""
    if label(REAL) not in table.index:
        raise ValueError(f"gap_decomposition: no {label(REAL)!r} row to compare with")
    real = table.loc[label(REAL)]
    rows = {}
    for name, r in table.drop(index=label(REAL)).iterrows():
        gap, images = real["labels"] - r["labels"], real["teacher"] - r["teacher"]
        rows[name] = {"gap to real (labels)": gap, "left in the images (teacher on both)": images,
                      "label noise (the rest)": gap - images}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "release"
    return out


def load_utility_gap(cfg: dict) -> pd.DataFrame | None:
    """The profile's measured labels-vs-images table (``<figures_dir>/utility_gap.csv``, from
    ``benchmarks/utility_gap.py --profile <profile>``) indexed by training set, or None when it
    was not measured."""
    table = _benchmark_table(cfg, UTILITY_GAP, {"training set", "labels", "teacher", "seeds",
                                                "teacher reads the labels (AUROC)"})
    return None if table is None else table.set_index("training set")


def load_label_guidance(cfg: dict) -> pd.DataFrame | None:
    """The profile's measured guidance-scale table (``<figures_dir>/label_guidance.csv``, from
    ``benchmarks/label_guidance.py --profile <profile>``): one row per (generator, guidance), with
    the numeric ``scale`` (DiADM's w_y, the class-conditional baseline's w), the val mean AUROC and
    the teacher's reading of the samples' labels; None when it was not measured."""
    table = _benchmark_table(cfg, LABEL_GUIDANCE, {"generator", "guidance", "scale", "val mean AUROC",
                                                   "teacher reads the labels"})
    return None if table is None else table.set_index(["generator", "guidance"])
