"""Stages ``release_edm_class``, ``release_diadm_raw``, ``release_autoguide``,
``release_diadm_paper``, ``release_diadm_filter``: the synthetic releases (DESIGN step 6; the registry is
``releases.RELEASES``, the settings ``privacy.generation``).

The filter releases (``releases.FILTERED``: 1, 2 and 4 survivors per source) come from one run
of the filter, nested: each keeps a source's best survivors, the larger ones more of them. Each
release directory (``privacy.release``) holds an ``ImageSet``,
``source_index.npy`` and, for the filtered ones, ``audit.csv``: these link every sample to its
source and stay in the private run directory (``trichotomy release`` exports a shareable copy).
Sampling is chunked and every finished chunk is written atomically into the stage's partial
directory, so an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import seeds
from ..config import ConfigError, register_section
from ..data.imageset import ImageSet, images_to_uint8
from ..device import default_device, resolve_precision
from ..diffusion.conditional import conditional_sampler
from ..io import atomic_path, atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.copy_veto import CopyVeto, VerdictSpace, pixel_space
from ..privacy.generation import (DIADM_STREAM, EDM_CLASS_STREAM, generate_config, noisy_conditions,
                                  reuse_first_candidate, source_indices)
from ..privacy.release import load_audit_dir, load_release_dir, make_release, save_release
from ..privacy.filter_audit import filter_summary
from ..privacy.roles import val_pairs_seed, veto_threshold
from ..privacy.sample_filter import (RANKED, classifier_fn_from, committee_defender_fn, guidance_at, run_filter,
                                     verifier_defender_fn)
from ..releases import FILTERED, RELEASES, release_stage
from .classifier import load_classifier
from .data import load_splits
from .diffusion import load_codec, load_denoiser, load_guide
from .encoder import load_embeddings, load_encoder
from .reid import load_committee_replicas, load_verifier

register_section("generate")(generate_config)

_SAMPLING_KEYS = ("seed", "generate.n_sources", "generate.solver", "generate.steps", "generate.guide",
                  "generate.batch_size", "generate.precision", "generate.condition_noise", "generate.condition_labels",
                  "generate.label_guidance")


def make_sample_fn(pipe: Pipeline, mode: str, conditions: np.ndarray, progress: bool = False,
                   solver: str | None = None, steps: int | None = None, guide: str | None = None,
                   condition_noise: float | None = None, condition_labels: bool | None = None,
                   label_guidance: float | None = None):
    """``fn(sources, seeds, guidance)`` of the trained denoiser serving ``mode`` ("class" with
    labels, "pseudo" with embeddings, indexed by source), with the profile's ``generate``
    sampler settings (``solver``/``steps``/``guide`` override them: guide "uncond" is
    classifier-free, "early" autoguidance; ``generate.precision`` is that of the network
    evaluations); pseudo-conditions get the profile's
    ``generate.condition_noise`` and, with ``generate.condition_labels``, the labels of the training
    image they are indexed by (pseudo-conditions are always indexed by training row).
    ``condition_noise`` / ``condition_labels`` override those two (0.0 and False: the paper's
    DiADM condition, the clean embedding alone). ``generate.label_guidance`` (``label_guidance``
    overrides it) applies where the labels are given, i.e. not under ``condition_labels=False``."""
    g = pipe.cfg["generate"]
    noise = g["condition_noise"] if condition_noise is None else condition_noise
    with_labels = g["condition_labels"] if condition_labels is None else condition_labels
    if mode == "pseudo" and noise:
        conditions = noisy_conditions(conditions, noise, int(pipe.cfg["seed"]))
    net, labels = load_denoiser(pipe, mode), None
    if mode == "pseudo" and with_labels:
        if net.config.label_dim == 0:
            raise ConfigError("generate.condition_labels: the network serving 'pseudo' has no label input "
                              "(label_dim=0); it needs the joint network (diffusion.models: [joint])")
        labels = load_splits(pipe)["train"].labels.astype(np.float32)
    # read only where the labels are given: a stage that drops them does not depend on the key
    w_y = None if labels is None else g["label_guidance"] if label_guidance is None else label_guidance
    return conditional_sampler(net, conditions, "labels" if mode == "class" else "embedding", labels=labels,
                               guide_net=load_guide(pipe, mode, guide or g["guide"]), codec=load_codec(pipe),
                               solver=solver or g["solver"], steps=steps or g["steps"], batch_size=g["batch_size"],
                               progress=progress, precision=sampling_precision(pipe),
                               label_guidance=w_y)


def sampling_precision(pipe: Pipeline) -> str:
    """``generate.precision`` resolved on the device the denoisers run on ("fp32" or "bf16")."""
    return resolve_precision(pipe.cfg["generate"]["precision"], default_device(), "generate.precision")


@dataclass
class FilterModels:
    """What the filter injects (``privacy.sample_filter``), built from the pipeline's trained models."""

    sample_fn: Callable
    defender_fn: Callable
    classifier_fn: Callable
    source_probs: np.ndarray    # the sources' consistency targets (filter.consistency)
    copy_veto: CopyVeto | None  # None when filter.copy_quantile and filter.identity_quantile are null
    threshold: float            # the veto threshold in use (filter.threshold, or from veto_recall; a committee's
                                #   is its first defender's: ``committee_defender_fn``)
    params: dict                # the filter parameters with that threshold
    member_thresholds: tuple = ()  # a committee's thresholds, one per defender (the first is ``threshold``)

    @property
    def copy_fn(self):
        return None if self.copy_veto is None else self.copy_veto.ratio


def defender_veto(pipe: Pipeline, verifier, train: ImageSet) -> tuple[Callable, float]:
    """(defender_fn, threshold) of a defender verifier under the profile's filter settings:
    every scan of the source's patient (``filter.all_scans``), the threshold given or set from
    the val split's same-patient pairs (``filter.veto_recall``)."""
    f = pipe.cfg["generate"]["filter"]
    fn = verifier_defender_fn(verifier, train.tensor(), patient_ids=train.patient_ids if f["all_scans"] else None)
    if f["veto_recall"] is None:
        return fn, float(f["threshold"])
    return fn, veto_threshold(verifier, load_splits(pipe)["val"], f["veto_recall"], val_pairs_seed(int(pipe.cfg["seed"])))


def committee(pipe: Pipeline) -> list:
    """The defenders of the veto (``filter.defenders`` = D): the filter's own, then D − 1 of its
    replicas (the same recipe, other seeds; stage ``reid_defender_committee``)."""
    n = pipe.cfg["generate"]["filter"]["defenders"]
    replicas = load_committee_replicas(pipe)
    if len(replicas) != n - 1:
        raise RuntimeError(f"{pipe.get('reid_defender_committee')}: {len(replicas)} replica(s) for "
                           f"generate.filter.defenders={n}; delete the directory to retrain them")
    return [load_verifier(pipe, "defender"), *replicas]


def committee_veto(pipe: Pipeline, train: ImageSet) -> tuple[Callable, float, tuple]:
    """(defender_fn, threshold, each member's threshold) of the filter's veto: its ``committee``,
    each member under the profile's ``defender_veto`` settings (``committee_defender_fn``)."""
    members = [defender_veto(pipe, v, train) for v in committee(pipe)]
    fn, threshold = committee_defender_fn(members)
    return fn, threshold, tuple(t for _, t in members)


def identity_spaces(pipe: Pipeline) -> dict[str, VerdictSpace]:
    """The identity rule's spaces: the verdict of every defender of the ``committee``, named
    ``defender``, ``defender_2``, …"""
    return {("defender" if i == 0 else f"defender_{i + 1}"): VerdictSpace(v) for i, v in enumerate(committee(pipe))}


def copy_veto(pipe: Pipeline, train: ImageSet, quantile: float | None = None, identity: bool = True,
              near_copy: bool = True) -> CopyVeto | None:
    """The filter's rule (1) of ``copy_veto.py``: with ``near_copy``, in the profile's
    ``filter.copy_spaces`` at ``quantile`` (default the profile's ``filter.copy_quantile``); with
    ``identity`` and ``filter.identity_quantile`` set, in the ``identity_spaces``. None when no rule is on."""
    f = pipe.cfg["generate"]["filter"]
    quantile = f["copy_quantile"] if quantile is None else quantile
    spaces, quantiles = {}, {}
    if near_copy and quantile is not None:
        named = {"pixels": pixel_space()}
        if "encoder" in f["copy_spaces"]:
            encoder = load_encoder(pipe)
            named["encoder"] = lambda x: encoder.embed(x)
        spaces.update({s: named[s] for s in f["copy_spaces"]})
        quantiles.update({s: quantile for s in f["copy_spaces"]})
    if identity and f["identity_quantile"] is not None:
        for name, space in identity_spaces(pipe).items():
            spaces[name], quantiles[name] = space, f["identity_quantile"]
    if not spaces:
        return None
    return CopyVeto(spaces, train.tensor(), train.patient_ids, quantiles)


def filter_models(pipe: Pipeline, train: ImageSet, progress: bool = False, solver=None, steps=None) -> FilterModels:
    """The sampler, the defender's veto (every scan of the source's patient when
    ``filter.all_scans``; a committee of ``filter.defenders``), the near-copy veto, the consistency classifier and the sources'
    consistency targets (its outputs on the training images, or their labels: ``filter.consistency``)."""
    f = pipe.cfg["generate"]["filter"]
    sample_fn = make_sample_fn(pipe, "pseudo", load_embeddings(pipe, "train"), progress, solver, steps)
    defender, threshold, member_thresholds = committee_veto(pipe, train)
    copy = copy_veto(pipe, train)
    clf = load_classifier(pipe)
    targets = clf.predict_proba(train) if f["consistency"] == "prediction" else train.labels.astype(np.float64)
    return FilterModels(sample_fn, defender, classifier_fn_from(clf), targets, copy, threshold,
                        {**f, "threshold": threshold}, member_thresholds)


def _sample_chunked(out: Path, sources: np.ndarray, fn, chunk_size: int, desc: str) -> np.ndarray:
    """uint8 images of ``fn(chunk)`` for every chunk of ``sources``; each chunk saved atomically
    under ``out`` and reused after an interruption."""
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in tqdm(range(0, len(sources), chunk_size), desc=desc, leave=False):
        path = out / f"chunk_{i // chunk_size:06d}.npy"
        if path.exists():
            parts.append(np.load(path, allow_pickle=False))
            continue
        images = images_to_uint8(fn(sources[i:i + chunk_size]))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, images, allow_pickle=False)
        parts.append(images)
    return np.concatenate(parts)


def _finish(ctx: StageContext, name: str, release: ImageSet, source_index, audit=None, seconds=None, **info) -> None:
    save_release(ctx.out / name, release, source_index, audit)
    atomic_write_json(ctx.out / name / "release.json", {"name": name, "n_samples": len(release),
                                                        "n_sources": int(len(np.unique(source_index))),
                                                        "seconds": seconds, **info})


def _single_sample_release(ctx: StageContext, name: str, mode: str, conditions, stream_tags, guidance: float,
                           guide: str | None = None, **condition) -> None:
    """One sample per source from stream ``stream_tags`` (attempt 0, candidate 0) at ``guidance``
    (``guide``: None = the profile's ``generate.guide``; ``condition``: ``condition_noise`` /
    ``condition_labels`` overrides of ``make_sample_fn``)."""
    if (ctx.out / name / "release.json").exists():  # finished before an interruption
        return
    g = ctx.config["generate"]
    seed = int(ctx.config["seed"])
    train = load_splits(ctx.pipeline)["train"]
    sources = source_indices(len(train), g["n_sources"], seed)
    start = time.perf_counter()
    fn = make_sample_fn(ctx.pipeline, mode, conditions(train), guide=guide, **condition)
    stream = seeds.stream_id(seed, *stream_tags)
    images = _sample_chunked(ctx.out / "chunks" / name, sources,
                             lambda s: fn(s, seeds.sample_seeds(stream, s), guidance), g["filter"]["chunk_size"], name)
    _finish(ctx, name, make_release(name, images, sources, train), sources, seconds=round(time.perf_counter() - start, 2),
            guidance=guidance, solver=g["solver"], steps=g["steps"], guide=guide or g["guide"],
            precision=sampling_precision(ctx.pipeline), **condition)
    shutil.rmtree(ctx.out / "chunks" / name)
    if not any((ctx.out / "chunks").iterdir()):
        (ctx.out / "chunks").rmdir()


@stage("release_edm_class", keys=(*_SAMPLING_KEYS, "generate.class_guidance", "generate.filter.chunk_size"),
       deps=("data", "diffusion"), version=2)
def release_edm_class_stage(ctx: StageContext) -> None:
    """Class-conditional EDM baseline: one sample per source, conditioned on its labels."""
    _single_sample_release(ctx, "edm_class", "class", lambda train: train.labels.astype(np.float32), EDM_CLASS_STREAM,
                           ctx.config["generate.class_guidance"])


@stage("release_diadm_raw", keys=(*_SAMPLING_KEYS, "generate.filter.guidance", "generate.filter.chunk_size"),
       deps=("data", "encoder", "diffusion"), version=2)
def release_diadm_raw_stage(ctx: StageContext) -> None:
    """DiADM without the filter: the filter's first candidate (attempt 0, candidate 0) per source."""
    _single_sample_release(ctx, "diadm_raw", "pseudo", lambda train: load_embeddings(ctx.pipeline, "train"),
                           DIADM_STREAM, ctx.config["generate.filter.guidance"])


@stage("release_autoguide", keys=(*_SAMPLING_KEYS, "generate.class_guidance", "generate.filter.guidance",
                                 "generate.filter.chunk_size"), deps=("data", "encoder", "diffusion"), version=1)
def release_autoguide_stage(ctx: StageContext) -> None:
    """``edm_class`` and ``diadm_raw`` again with autoguidance: the same conditions, seeds and
    guidance weight, the guide being the network's early EMA checkpoint (``diffusion.train.guide_step``)
    instead of its unconditional mode — so each pair differs in the guide alone. (Under
    ``generate.guide: early`` both pairs coincide.)"""
    _single_sample_release(ctx, "edm_class_autoguide", "class", lambda train: train.labels.astype(np.float32),
                           EDM_CLASS_STREAM, ctx.config["generate.class_guidance"], guide="early")
    _single_sample_release(ctx, "diadm_raw_autoguide", "pseudo", lambda train: load_embeddings(ctx.pipeline, "train"),
                           DIADM_STREAM, ctx.config["generate.filter.guidance"], guide="early")


_PAPER_CONDITION_KEYS = tuple(k for k in _SAMPLING_KEYS if k not in ("generate.condition_noise",
                                                                         "generate.condition_labels",
                                                                         "generate.label_guidance"))


@stage("release_diadm_paper", keys=(*_PAPER_CONDITION_KEYS, "generate.filter.guidance", "generate.filter.chunk_size"),
       deps=("data", "encoder", "diffusion"), version=1)
def release_diadm_paper_stage(ctx: StageContext) -> None:
    """``diadm_raw`` under the paper's condition: the source's clean embedding alone (no noise, no
    labels), the same seeds, guidance and guide — so the pair differs in the condition alone and
    shows what the profile's condition (``generate.condition_noise`` / ``condition_labels``) does
    to the identity a raw DiADM sample carries."""
    _single_sample_release(ctx, "diadm_raw_paper", "pseudo", lambda train: load_embeddings(ctx.pipeline, "train"),
                           DIADM_STREAM, ctx.config["generate.filter.guidance"], condition_noise=0.0,
                           condition_labels=False)


@stage("release_diadm_filter", keys=(*_SAMPLING_KEYS, "generate.filter"),
       deps=("data", "encoder", "diffusion", "reid_defender", "reid_defender_committee", "classifier",
             "release_diadm_raw"), version=3)
def release_diadm_filter_stage(ctx: StageContext) -> None:
    """DiADM + the privacy filter → one directory per ``releases.FILTERED`` release (1, 2, 4 survivors)."""
    g = ctx.config["generate"]
    keep, largest = g["filter"]["keep"], max(FILTERED, key=lambda n: RELEASES[n].survivors)
    if keep < RELEASES[largest].survivors:
        raise ValueError(f"generate.filter.keep={keep} must be >= {RELEASES[largest].survivors}: release {largest} "
                         f"keeps {RELEASES[largest].survivors} survivors per source")
    seed = int(ctx.config["seed"])
    train = load_splits(ctx.pipeline)["train"]
    sources = source_indices(len(train), g["n_sources"], seed)
    start = time.perf_counter()
    models = filter_models(ctx.pipeline, train)
    raw, raw_sources = load_release_dir(ctx.inputs["release_diadm_raw"] / "diadm_raw")
    stream = seeds.stream_id(seed, *DIADM_STREAM)
    sample_fn = reuse_first_candidate(models.sample_fn, raw.images, raw_sources, stream, guidance_at(0, g["filter"]))
    result = run_filter(sources, sample_fn, models.defender_fn, models.classifier_fn, models.source_probs, models.params,
                        stream, out_dir=ctx.out / "chunks", patient_ids=train.patient_ids, names=train.names,
                        copy_fn=models.copy_fn)
    seconds = round(time.perf_counter() - start, 2)
    summary = filter_summary(result.audit)
    for name in FILTERED:
        images, src, rank = result.select(RELEASES[name].survivors - 1)
        audit = result.audit.copy()
        survivor_rank = audit["bce"].where(audit["decision"].isin(RANKED)).groupby(audit["source_index"]).rank(
            method="first")  # 1 = chosen; ties in drawing order, as the filter breaks them
        audit["released"] = survivor_rank <= RELEASES[name].survivors
        copy_thresholds = None if models.copy_veto is None else models.copy_veto.thresholds
        _finish(ctx, name, make_release(name, images, src, train, rank), src, audit, seconds=seconds,
                solver=g["solver"], steps=g["steps"], precision=sampling_precision(ctx.pipeline), filter=g["filter"],
                summary=summary,
                veto_threshold=models.threshold, copy_thresholds=copy_thresholds,
                **({"committee_thresholds": list(models.member_thresholds)} if len(models.member_thresholds) > 1 else {}))
    shutil.rmtree(ctx.out / "chunks")


# -------------------------------------------------------------------------------- loaders
def _release_dir(pipe: Pipeline, name: str) -> Path:
    return pipe.get(release_stage(name)) / name


def load_release(pipe: Pipeline, name: str) -> tuple[ImageSet, np.ndarray]:
    """(ImageSet, source_index) of generated release ``name`` (``releases.RELEASES``); computed on
    first use. ``source_index`` is int64 (M,), the row of the *train* split each sample was
    generated from; labels and patient ids are the source's."""
    return load_release_dir(_release_dir(pipe, name))


def load_audit(pipe: Pipeline, name: str = "diadm_filter") -> pd.DataFrame:
    """The filter's audit table (one row per drawn candidate + one per skipped source); column
    ``released`` says what went into release ``name`` (one of ``releases.FILTERED``)."""
    return load_audit_dir(_release_dir(pipe, name))


def release_info(pipe: Pipeline, name: str) -> dict:
    """``release.json``: sample count, seconds, sampler settings (and the filter summary)."""
    return json.loads((_release_dir(pipe, name) / "release.json").read_text())


__all__ = ["RELEASES", "make_sample_fn", "FilterModels", "filter_models", "load_release", "load_audit", "release_info"]
