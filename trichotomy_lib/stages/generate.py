"""Stages ``release_edm_class``, ``release_diadm_raw``, ``release_diadm_filter``: the synthetic releases
(DESIGN step 6).

One synthetic sample per real training image (the *source*), labelled with the source's labels:

* ``edm_class`` — class-conditional EDM baseline: conditioned on the source's labels, no filter.
* ``diadm_raw`` — DiADM: conditioned on the source's embedding (pseudo-conditioning); the
  first candidate of the filter's seed stream (attempt 0, candidate 0), no filter.
* ``diadm_filter`` — DiADM + the privacy filter (``privacy.filter``): the defender vetoes
  every candidate it judges to be the source's patient; the most label-consistent survivor
  is released; all-flagged sources are retried at lower guidance, then skipped.
* ``diadm_filter_2nd`` — ``diadm_filter`` plus each source's second-best survivor.

The two filter releases come from one run of the filter (stage ``release_diadm_filter``).
Because ``diadm_raw`` is the filter's first candidate, that stage reuses it instead of sampling
it again (the defender still judges it).

Each release directory (``privacy.release``) holds an ``ImageSet``, ``source_index.npy`` and,
for the filtered ones, ``audit.csv``. ``load_release(pipe, name)`` → (ImageSet, source_index).
Sampling is chunked and every finished chunk is written atomically into the stage's partial
directory, so an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError, section
from ..data.imageset import ImageSet, images_to_uint8, uint8_to_tensor
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..privacy import filter as flt
from ..privacy.release import load_audit_dir, load_release_dir, make_release, save_release
from ..privacy.reid_train import derive_seed

DEFAULTS: dict = {
    "n_sources": None,       # None: every training image is a source; int: a seeded random subset of that many
    "solver": "dpm",         # "dpm" (DPM-Solver++(2M), N evaluations) or "heun" (EDM, 2N − 1)
    "steps": 10,             # sampler steps N (paper: Heun 32)
    "guide": "uncond",       # "uncond": classifier-free (the unconditional mode/model); "early": autoguidance
    "class_guidance": None,  # guidance of edm_class (None: filter.guidance, the DiADM releases' first attempt)
    "batch_size": 256,       # samples per forward pass (does not change any image)
    "filter": {},            # privacy.filter.FILTER_DEFAULTS overrides (K, rounds, guidance schedule, ...)
}

# release name → (stage, sub-directory)
RELEASE_STAGES = {"edm_class": "release_edm_class", "diadm_raw": "release_diadm_raw",
                  "diadm_filter": "release_diadm_filter", "diadm_filter_2nd": "release_diadm_filter"}
RELEASES = tuple(RELEASE_STAGES)

_SAMPLING_KEYS = ("seed", "generate.n_sources", "generate.solver", "generate.steps", "generate.guide",
                  "generate.batch_size", "diffusion.vae_path")


def generate_config(cfg: dict) -> dict:
    """The ``generate`` section over ``DEFAULTS``, with ``filter`` checked (unknown keys named)."""
    g = section(cfg, "generate", DEFAULTS)
    try:
        g["filter"] = flt.check_filter_params(g["filter"])
    except ValueError as err:
        raise ConfigError(f"generate.filter: {err}") from None
    if g["solver"] not in ("dpm", "heun"):
        raise ConfigError(f"generate.solver must be 'dpm' or 'heun', got {g['solver']!r}")
    if g["guide"] not in ("uncond", "early"):
        raise ConfigError(f"generate.guide must be 'uncond' or 'early', got {g['guide']!r}")
    if not isinstance(g["steps"], int) or g["steps"] < 2:
        raise ConfigError(f"generate.steps must be an integer >= 2, got {g['steps']!r}")
    if g["n_sources"] is not None and (not isinstance(g["n_sources"], int) or g["n_sources"] < 1):
        raise ConfigError(f"generate.n_sources must be null or an integer >= 1, got {g['n_sources']!r}")
    if g["class_guidance"] is None:
        g["class_guidance"] = g["filter"]["guidance"]
    return g


def _params_config(ctx: StageContext) -> dict:
    """The generate config rebuilt from the stage's declared keys only."""
    gen = {}
    for key, value in ctx.params.items():
        if key.startswith("generate.") and value is not None:
            path = key.split(".")[1:]
            node = gen
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return generate_config({"generate": gen})


def source_indices(n_train: int, n_sources: int | None, seed: int) -> np.ndarray:
    """The sources: all training rows, or a seeded random subset of ``n_sources`` (sorted)."""
    if n_sources is None or n_sources >= n_train:
        return np.arange(n_train, dtype=np.int64)
    rng = np.random.default_rng(derive_seed(seed, "generate", "sources"))
    return np.sort(rng.choice(n_train, size=n_sources, replace=False)).astype(np.int64)


# ------------------------------------------------------------------------------ sampling
def make_sample_fn(pipe: Pipeline, g: dict, mode: str, conditions: np.ndarray, progress: bool = False,
                   solver: str | None = None, steps: int | None = None):
    """``sample_fn(sources, seeds, guidance)`` from the trained denoiser serving ``mode``.

    ``conditions`` is indexed by source: labels (N_train, 8) for "class", embeddings (N_train, D)
    for "pseudo". The guide: the unconditional mode of the same (joint) network or the separate
    uncond model ("uncond"), or the early EMA checkpoint ("early", autoguidance). Latents (when
    ``diffusion.vae_path`` is set) are decoded to pixels.
    """
    from ..diffusion.sampler import sample
    from .diffusion import diffusion_config, load_codec, load_denoiser

    d = diffusion_config(pipe.cfg)
    net = load_denoiser(pipe, mode)
    if g["guide"] == "early":
        guide_net = load_denoiser(pipe, mode, which="guide")
    elif "joint" in d["models"]:
        guide_net = None  # classifier-free: the joint network with its conditions dropped
    else:
        guide_net = load_denoiser(pipe, "uncond")
    codec = load_codec(pipe) if d["vae_path"] else None
    cond_all = torch.as_tensor(np.asarray(conditions), dtype=torch.float32)
    key = "labels" if mode == "class" else "embedding"
    solver, steps = solver or g["solver"], steps or g["steps"]

    def fn(sources, seeds, guidance):
        x = sample(net, {key: cond_all[torch.as_tensor(sources)]}, seeds, steps=steps, guidance=guidance,
                   guide_net=guide_net if guidance != 1.0 else None, solver=solver, batch_size=g["batch_size"],
                   clamp=codec is None, progress=progress)
        return codec.decode(x) if codec is not None else x

    return fn


def _sample_chunked(out: Path, sources: np.ndarray, fn, chunk_size: int, desc: str) -> np.ndarray:
    """uint8 images of ``fn(chunk)`` for every chunk of ``sources``; each chunk saved atomically
    under ``out`` and reused after an interruption."""
    from tqdm.auto import tqdm

    from ..io import atomic_path

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


@stage("release_edm_class", keys=(*_SAMPLING_KEYS, "generate.class_guidance", "generate.filter.guidance",
                                  "generate.filter.chunk_size"), deps=("data", "diffusion"), version=1)
def release_edm_class_stage(ctx: StageContext) -> None:
    """Class-conditional EDM baseline: one sample per source, conditioned on its labels."""
    from .data import load_splits

    g = _params_config(ctx)
    seed = int(ctx.params["seed"])
    train = load_splits(ctx.pipeline)["train"]
    sources = source_indices(len(train), g["n_sources"], seed)
    start = time.perf_counter()
    fn = make_sample_fn(ctx.pipeline, g, "class", train.labels.astype(np.float32))
    stream = flt.seed_stream(seed, "generate", "edm_class")
    images = _sample_chunked(ctx.out / "chunks", sources,
                             lambda s: fn(s, flt.candidate_seed(stream, s, 0, 0), g["class_guidance"]),
                             g["filter"]["chunk_size"], "edm_class")
    _finish(ctx, "edm_class", make_release("edm_class", images, sources, train), sources,
            seconds=round(time.perf_counter() - start, 2), guidance=g["class_guidance"], solver=g["solver"], steps=g["steps"])
    shutil.rmtree(ctx.out / "chunks")


def _diadm_stream(seed: int) -> int:
    return flt.seed_stream(seed, "generate", "diadm")


@stage("release_diadm_raw", keys=(*_SAMPLING_KEYS, "generate.filter.guidance", "generate.filter.chunk_size"),
       deps=("data", "encoder", "diffusion"), version=1)
def release_diadm_raw_stage(ctx: StageContext) -> None:
    """DiADM without the filter: the filter's first candidate (attempt 0, candidate 0) per source."""
    from .data import load_splits
    from .encoder import load_embeddings

    g = _params_config(ctx)
    seed = int(ctx.params["seed"])
    train = load_splits(ctx.pipeline)["train"]
    sources = source_indices(len(train), g["n_sources"], seed)
    start = time.perf_counter()
    fn = make_sample_fn(ctx.pipeline, g, "pseudo", load_embeddings(ctx.pipeline, "train"))
    guidance = flt.guidance_at(0, g["filter"])
    images = _sample_chunked(ctx.out / "chunks", sources,
                             lambda s: fn(s, flt.candidate_seed(_diadm_stream(seed), s, 0, 0), guidance),
                             g["filter"]["chunk_size"], "diadm_raw")
    _finish(ctx, "diadm_raw", make_release("diadm_raw", images, sources, train), sources,
            seconds=round(time.perf_counter() - start, 2), guidance=guidance, solver=g["solver"], steps=g["steps"])
    shutil.rmtree(ctx.out / "chunks")


def reuse_first_candidate(sample_fn, raw_images: np.ndarray, raw_sources: np.ndarray, stream: int, guidance: float):
    """Wrap ``sample_fn`` so that candidate (attempt 0, j 0) of a source — exactly the diadm_raw
    sample, same seed and guidance — is read from the raw release instead of sampled again."""
    row = {int(s): i for i, s in enumerate(raw_sources)}
    first = {int(flt.candidate_seed(stream, s, 0, 0)): i for s, i in row.items()}

    def fn(sources, seeds, g):
        hit = np.array([g == guidance and int(s) in first for s in seeds], dtype=bool)
        out = None
        if (~hit).any():
            drawn = torch.as_tensor(sample_fn(sources[~hit], seeds[~hit], g), dtype=torch.float32)
            out = torch.empty((len(seeds), *drawn.shape[1:]))
            out[torch.from_numpy(~hit)] = drawn
        if hit.any():
            cached = raw_images[[first[int(s)] for s in seeds[hit]]]
            cached = uint8_to_tensor(cached)
            if out is None:
                out = torch.empty((len(seeds), *cached.shape[1:]))
            out[torch.from_numpy(hit)] = cached
        return out

    return fn


def filter_models(pipe: Pipeline, g: dict, train: ImageSet, progress: bool = False, solver=None, steps=None):
    """(sample_fn, defender_fn, classifier_fn, source_probs) of the pipeline's trained models."""
    from .classifier import load_classifier
    from .encoder import load_embeddings
    from .reid import load_verifier

    sample_fn = make_sample_fn(pipe, g, "pseudo", load_embeddings(pipe, "train"), progress, solver, steps)
    defender = flt.verifier_defender_fn(load_verifier(pipe, "defender"), train.tensor())
    clf = load_classifier(pipe)
    return sample_fn, defender, flt.classifier_fn_from(clf), clf.predict_proba(train)


@stage("release_diadm_filter", keys=(*_SAMPLING_KEYS, "generate.filter"),
       deps=("data", "encoder", "diffusion", "reid_defender", "classifier", "release_diadm_raw"), version=1)
def release_diadm_filter_stage(ctx: StageContext) -> None:
    """DiADM + the privacy filter → ``diadm_filter/`` and ``diadm_filter_2nd/`` (with second bests)."""
    from .data import load_splits

    g = _params_config(ctx)
    seed = int(ctx.params["seed"])
    train = load_splits(ctx.pipeline)["train"]
    sources = source_indices(len(train), g["n_sources"], seed)
    start = time.perf_counter()
    sample_fn, defender, classifier, source_probs = filter_models(ctx.pipeline, g, train)
    raw, raw_sources = load_release_dir(ctx.inputs["release_diadm_raw"] / "diadm_raw")
    stream = _diadm_stream(seed)
    sample_fn = reuse_first_candidate(sample_fn, raw.images, raw_sources, stream, flt.guidance_at(0, g["filter"]))
    result = flt.run_filter(sources, sample_fn, defender, classifier, source_probs, g["filter"], stream,
                            out_dir=ctx.out / "chunks", patient_ids=train.patient_ids, names=train.names)
    seconds = round(time.perf_counter() - start, 2)
    summary = flt.filter_summary(result.audit)
    for name, max_rank in (("diadm_filter", 0), ("diadm_filter_2nd", 1)):
        images, src, rank = result.select(max_rank)
        audit = result.audit.copy()
        audit["released"] = audit["decision"].isin(["chosen"] if max_rank == 0 else ["chosen", "second_best"])
        _finish(ctx, name, make_release(name, images, src, train, rank), src, audit, seconds=seconds,
                solver=g["solver"], steps=g["steps"], filter=g["filter"], summary=summary)
    shutil.rmtree(ctx.out / "chunks")


# -------------------------------------------------------------------------------- loaders
def _release_dir(pipe: Pipeline, name: str) -> Path:
    if name not in RELEASE_STAGES:
        raise KeyError(f"unknown release {name!r}; known: {list(RELEASE_STAGES)}")
    return pipe.get(RELEASE_STAGES[name]) / name


def load_release(pipe: Pipeline, name: str) -> tuple[ImageSet, np.ndarray]:
    """(ImageSet, source_index) of release ``name`` (``RELEASES``); computed on first use.

    ``source_index`` is int64 (M,), the row of the *train* split (``load_splits(pipe)["train"]``)
    each sample was generated from; labels and patient ids are the source's.
    """
    return load_release_dir(_release_dir(pipe, name))


def load_audit(pipe: Pipeline, name: str = "diadm_filter") -> pd.DataFrame:
    """The filter's audit table (one row per drawn candidate + one per skipped source); column
    ``released`` says what went into release ``name`` ("diadm_filter" or "diadm_filter_2nd")."""
    return load_audit_dir(_release_dir(pipe, name))


def release_info(pipe: Pipeline, name: str) -> dict:
    """``release.json``: sample count, seconds, sampler settings (and the filter summary)."""
    import json

    return json.loads((_release_dir(pipe, name) / "release.json").read_text())


def candidate_examples(pipe: Pipeline, sources, attempt: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """All K candidates of ``attempt`` for a few ``sources``, redrawn from their seeds (exactly the
    images the filter judged) → (images (n, K, H, W) uint8, table with one row per candidate:
    source_index, candidate, seed, guidance, defender_prob, flagged, bce, decision — "not drawn"
    for candidates the filter never needed)."""
    from .data import load_splits

    g = generate_config(pipe.cfg)
    seed = int(pipe.cfg["seed"])
    train = load_splits(pipe)["train"]
    audit = load_audit(pipe)
    sample_fn, defender, classifier, source_probs = filter_models(pipe, g, train)
    k = g["filter"]["k"]
    sources = np.asarray(sources, dtype=np.int64)
    src = np.repeat(sources, k)
    j = np.tile(np.arange(k), len(sources))
    guidance = flt.guidance_at(attempt, g["filter"])
    seeds = flt.candidate_seed(_diadm_stream(seed), src, attempt, j)
    images = images_to_uint8(sample_fn(src, seeds, guidance))
    x = uint8_to_tensor(images)
    prob = np.asarray(defender(src, x))
    from ..evaluation.classifier import label_consistency

    bce = label_consistency(source_probs[src], classifier(x))
    table = pd.DataFrame({"source_index": src, "candidate": j, "seed": seeds, "guidance": guidance,
                          "defender_prob": prob, "flagged": prob >= g["filter"]["threshold"], "bce": bce})
    drawn = audit[audit["attempt"] == attempt][["seed", "decision"]]
    table = table.merge(drawn, on="seed", how="left")
    table["decision"] = table["decision"].fillna("not drawn")
    return images.reshape(len(sources), k, *images.shape[1:]), table


def rescore_release(pipe: Pipeline, name: str, role: str = "defender") -> np.ndarray:
    """P(same patient) of every released sample against its source by the ``role`` verifier
    (``"defender"`` re-checks the filter's hard constraint; ``"auditor"`` is independent)."""
    from .data import load_splits
    from .reid import load_verifier

    release, source_index = load_release(pipe, name)
    if len(release) == 0:
        return np.zeros(0)
    train = load_splits(pipe)["train"]
    fn = flt.verifier_defender_fn(load_verifier(pipe, role), train.tensor(np.unique(source_index)))
    position = {int(s): i for i, s in enumerate(np.unique(source_index))}
    return np.asarray(fn(np.array([position[int(s)] for s in source_index]), release.tensor()))
