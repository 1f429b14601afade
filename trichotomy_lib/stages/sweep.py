"""Stage ``sweep``: the guidance sweep (DESIGN step 9; ``evaluation.sweep``).

Per guidance ``w``: raw DiADM samples of a seeded subset of sources (the same per-source seeds
at every w) → Fréchet distance and IRS in the fidelity feature space, the auditor's
re-identification rate (vs source; vs any training patient, calibrated to 5 % false alarms on
the val split's unseen patients), and the downstream AUROC of a classifier trained on them.
Each finished point is kept in the partial directory, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import seeds
from ..config import register_section
from ..data.imageset import images_to_uint8
from ..evaluation.fidelity import fidelity_row, penultimate_features
from ..evaluation.sweep import sweep_config
from ..evaluation.utility import train_and_predict, utility_row
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.audit import EmbeddingCache, reid_audit
from ..privacy.generation import source_indices
from ..privacy.release import make_release
from .data import load_splits
from .encoder import load_embeddings
from .fidelity import load_feature_net
from .generate import make_sample_fn
from .reid import load_verifier
from .utility import classifier_recipe, save_npy

register_section("sweep")(sweep_config)


@stage("sweep", keys=("seed", "sweep", "generate.solver", "generate.steps", "generate.guide", "generate.batch_size",
                      "generate.precision", "generate.condition_noise", "generate.condition_labels",
                      "generate.label_guidance",
                      "classifier", "utility.classifier", "utility.alpha_e", "utility.n_boot", "utility.level"),
       deps=("data", "encoder", "diffusion", "reid_auditor", "fidelity_features", "utility_real"), version=4)
def sweep_stage(ctx: StageContext) -> None:
    """Per guidance w: raw DiADM samples of a seeded subset of sources → FD, IRS, re-id, AUROC."""
    pipe = ctx.pipeline
    s, u = ctx.config["sweep"], ctx.config["utility"]
    seed = int(ctx.config["seed"])
    splits = load_splits(pipe, mmap=True)
    train = load_splits(pipe)["train"]
    sources = source_indices(len(train), s["n_sources"], seed, "sweep", "sources")
    sample_seeds = seeds.sample_seeds(seeds.stream_id(seed, "sweep"), sources)  # the same seeds at every w
    sample_fn = make_sample_fn(pipe, "pseudo", load_embeddings(pipe, "train"))
    feat_clf, train_f, test_f = load_feature_net(pipe)
    auditor = load_verifier(pipe, "auditor")
    embed = EmbeddingCache(auditor)
    real_probs = np.load(ctx.inputs["utility_real"] / "test_probs.npy")[0]  # seed 0: the sweep trains one seed per w
    bseed = seeds.derive(seed, "utility", "bootstrap")
    for w in tqdm(s["guidances"], desc="guidance sweep", leave=False):
        point = ctx.out / f"w_{w:g}"
        if (point / "point.json").exists():
            continue  # finished before an interruption
        start = time.perf_counter()
        images = images_to_uint8(sample_fn(sources, sample_seeds, w))
        release = make_release(f"sweep_w{w:g}", images, sources, train)
        sample_seconds = time.perf_counter() - start
        fid = fidelity_row(penultimate_features(feat_clf, release), train_f, test_f, u["alpha_e"])
        audit = reid_audit(release, sources, train, auditor, k=s["audit_k"], level=u["level"], embed=embed,
                           heldout=splits["val"], false_alarm=s["audit_false_alarm"])
        _, probs = train_and_predict(release, splits["val"], splits["test"], classifier_recipe(ctx.config), seed,
                                     checkpoint_dir=point / "checkpoint", progress=False)
        util = utility_row(splits["test"].labels, probs, real_probs, u["n_boot"], bseed, u["level"])
        shutil.rmtree(point / "checkpoint", ignore_errors=True)
        save_npy(point / "examples.npy", images[:8])
        atomic_write_json(point / "point.json", {
            "guidance": w, "n": len(release), **{f"fid_{k}" if k in ("n",) else k: v for k, v in fid.items()},
            "auroc": util["auroc"]["mean"], "auroc_lo": util["lo"]["mean"], "auroc_hi": util["hi"]["mean"],
            "diff_points": util["diff_points"], "diff_lo": util["diff_lo"], "diff_hi": util["diff_hi"],
            **{k: audit[k] for k in ("src_rate", "src_lo", "src_hi", "all_rate", "all_lo", "all_hi")},
            "sample_seconds": round(sample_seconds, 2), "seconds": round(time.perf_counter() - start, 2)})
    atomic_write_json(ctx.out / "sweep.json", {"guidances": s["guidances"], "n_sources": len(sources),
                                               "note": "raw DiADM sampler (no filter); same per-source seeds at every w"})


def load_sweep(pipe: Pipeline) -> pd.DataFrame:
    """One row per guidance w (sorted): FD, IRS (adjusted, with bounds), AUROC (with CI and Δ to
    real), auditor re-id rates vs source / vs any training patient (Wilson CIs), timings."""
    path = pipe.get("sweep")
    ws = json.loads((path / "sweep.json").read_text())["guidances"]
    rows = [json.loads((path / f"w_{w:g}" / "point.json").read_text()) for w in ws]
    return pd.DataFrame(rows).set_index("guidance").sort_index()


def load_sweep_examples(pipe: Pipeline) -> dict[float, np.ndarray]:
    """{w: (8, H, W) uint8} the first samples of each point (same sources and seeds)."""
    path = pipe.get("sweep")
    ws = json.loads((path / "sweep.json").read_text())["guidances"]
    return {w: np.load(path / f"w_{w:g}" / "examples.npy") for w in ws}
