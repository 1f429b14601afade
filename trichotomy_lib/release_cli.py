"""``trichotomy release``: a data holder's images in, an audited, shareable dataset out.

The command runs the stages a release needs — not the notebooks: the dataset and its
patient-disjoint split, the two verifiers, the reference classifier, the pseudo-conditioning
encoder, the diffusion model, the releases and the filter, the privacy evaluation, and the
classifier trained on the filtered release — each with its progress bar and cached in the run
directory, so an interrupted run resumes where it stopped. Then it exports the filtered
release (``export.export_release``):

* PNGs under fresh random names + ``metadata.csv`` (the Hugging Face ``imagefolder`` layout),
  a dataset card ``README.md`` and ``privacy.json``;
* nothing that links to a source: the run directory keeps the source indices, patient ids,
  names, seeds and the filter's audit; every byte of the export is scanned for the training
  data's patient ids, image names and the filter's per-sample seeds before it is installed;
* refused when the strongest attacker's upper 95 % bound of singling-out risk exceeds
  ``--bound`` (default 0.05), naming the attacker and the excess — unless the research
  override ``--allow-failed-audit`` is given, which stamps the card as FAILED.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import config as config_mod
from . import stages  # noqa: F401  (registers every stage and config section)
from .analysis.utility import utility_rows as utility_result
from .export import ExportRefused, attacker_rows, export_release, utility_rows
from .pipeline import Pipeline
from .privacy.pso import ATTACKER_LABELS
from .releases import REAL, label
from .stages.data import load_splits
from .stages.generate import load_audit, load_release
from .stages.privacy import load_privacy

__all__ = ["release_config", "run_release", "forbidden_tokens", "add_parser", "main_release"]

RELEASE = "diadm_filter"   # the release that is exported
STAGES = ("data", "reid_defender", "reid_auditor", "classifier", "encoder", "diffusion", "release_edm_class",
          "release_diadm_raw", "release_diadm_filter", "control_population", "privacy_eval", "utility_real",
          f"utility_{RELEASE}")


def release_config(profile: str, filelist: str | None = None, data_root: str | None = None,
                   run_root: str | None = None) -> dict:
    """The profile with the data holder's file list in place of its dataset.

    ``filelist`` (a path; relative paths are taken from the current directory) replaces the
    profile's ``data.source``/``data.filelist``; the rest of ``data`` (image size, split) is
    kept. PhantomCXR's extra verifier patients cannot be drawn for real data, so
    ``reid.extra_patients`` is set to 0 then. The run goes to ``<run_root>/<profile>-release``.
    """
    cfg = config_mod.resolve(profile)
    if filelist is not None:
        if data_root is None:
            raise config_mod.ConfigError("--data-root is required with --filelist (the folder the paths are relative to)")
        cfg["data"] = {**(cfg.get("data") or {}), "source": "filelist", "filelist": os.path.abspath(filelist)}
        for key in ("site", "n_patients", "max_scans", "phantom", "seed", "val_patients", "test_patients"):
            cfg["data"].pop(key, None)
        cfg["data_root"] = os.path.abspath(data_root)
        cfg["reid"] = {**(cfg.get("reid") or {}), "extra_patients": 0}
    cfg["profile"] = f"{cfg['profile']}-release"
    cfg["figures_dir"] = None
    if run_root is not None:
        cfg["run_root"] = os.path.abspath(run_root)
    return cfg


def forbidden_tokens(pipe: Pipeline) -> list[str]:
    """What must never appear in an export: every real image's patient id and name (all
    splits), and the filter's per-sample seeds (which identify a source's candidates)."""
    tokens = set()
    for split in load_splits(pipe).values():
        tokens.update(str(p) for p in np.unique(split.patient_ids))
        for name in split.names:
            tokens.add(str(name))
            tokens.add(Path(str(name)).name)
    tokens.update(str(int(s)) for s in load_audit(pipe)["seed"].dropna().unique())
    return sorted(t for t in tokens if len(t.encode()) >= 4)


def _settings(cfg: dict) -> dict:
    g, f = cfg["generate"], cfg["generate"]["filter"]
    return {
        "generator": f"EDM denoiser ({cfg['diffusion']['preset']} preset), pseudo-conditioned (DiADM), "
                     f"{'latent' if cfg['diffusion']['vae_path'] else 'pixel'} space",
        "encoder": cfg["encoder"]["backbone"] or "in-project self-supervised (SimCLR)",
        "condition": "source image's embedding" + (" and its finding labels" if g["condition_labels"] else ""),
        "condition noise (σ)": g["condition_noise"],
        "label guidance (w_y)": g["label_guidance"] if g["condition_labels"] else None,
        "sampler": f"{g['solver']}, {g['steps']} steps", "guide": g["guide"],
        "candidates per attempt (K)": f["k"], "guidance": f["guidance"], "guidance step per retry": f["guidance_step"],
        "guidance floor": f["guidance_floor"], "attempts per source": f["max_attempts"],
        "defender veto: P(same patient) >=": f["threshold"],
        "survivor chosen by": {"prediction": "label consistency with the classifier's output on its source",
                               "labels": "label consistency with its source's labels"}[f["consistency"]],
        "image size": cfg["data"]["image_size"],
    }


def run_release(out: str | os.PathLike, profile: str = "default", filelist: str | None = None,
                data_root: str | None = None, run_root: str | None = None, bound: float = 0.05,
                allow_failed_audit: bool = False, overwrite: bool = False):
    """Compute (or resume) every stage of the release, then export it to ``out``.

    Returns the ``ExportReport``; raises ``ExportRefused`` when the audit fails ``bound``
    (strongest-attacker upper 95 % bound of risk, in (0, 1]) and no override is given.
    """
    pipe = Pipeline(release_config(profile, filelist, data_root, run_root))
    for name in tqdm(STAGES, desc="trichotomy release", unit="stage"):
        pipe.get(name)
    images, _ = load_release(pipe, RELEASE)
    df, _ = load_privacy(pipe)
    privacy = attacker_rows(df.loc[RELEASE].to_dict(), ATTACKER_LABELS)
    result = utility_result(pipe, releases=[RELEASE])
    utility = utility_rows(result["rows"], RELEASE, labels={REAL: label(REAL)},
                           n_train={k: v["n_train"] for k, v in result["info"].items()},
                           test_set=f"the real test split ({len(load_splits(pipe)['test'])} images)")
    source = ("the data holder's file list" if pipe.cfg["data"]["source"] == "filelist"
              else "the PhantomCXR testbed")
    return export_release(out, images.images, images.labels, privacy, utility, _settings(pipe.cfg), bound=bound,
                          level=pipe.cfg["privacy"]["level"], allow_failed_audit=allow_failed_audit,
                          forbidden=forbidden_tokens(pipe), overwrite=overwrite, source_dataset=source)


# ---------------------------------------------------------------------------------- command
def add_parser(sub) -> None:
    rel = sub.add_parser("release", help="turn a file list into an audited, shareable synthetic dataset")
    rel.add_argument("--out", required=True, help="folder to write the shareable dataset to (must not exist)")
    rel.add_argument("--filelist", help="your file list ('<relpath> <8 labels>' per line, or CSV); "
                                        "default: the profile's dataset")
    rel.add_argument("--data-root", help="the folder the file list's paths are relative to")
    rel.add_argument("--profile", default="default", help="model sizes and settings (default: default)")
    rel.add_argument("--run-root", help="where the private run directory goes (default: the profile's run_root)")
    rel.add_argument("--bound", type=float, default=0.05,
                     help="refuse the export if the strongest attacker's upper 95%% bound of risk exceeds this")
    rel.add_argument("--allow-failed-audit", action="store_true",
                     help="RESEARCH ONLY: export even if the audit fails (the card says FAILED)")
    rel.add_argument("--overwrite", action="store_true", help="replace a previous export in --out")


def main_release(args) -> int:
    try:
        report = run_release(args.out, args.profile, args.filelist, args.data_root, args.run_root, args.bound,
                             args.allow_failed_audit, args.overwrite)
    except ExportRefused as err:
        print(f"trichotomy release REFUSED: {err}")
        return 3
    except (config_mod.ConfigError, ValueError, FileNotFoundError) as err:
        print(f"trichotomy release: {err}")
        return 2
    print(f"wrote {report.n_images} images to {report.out_dir}")
    print(report.verdict.sentence)
    return 0
