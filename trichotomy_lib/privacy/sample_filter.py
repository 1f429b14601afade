"""The sample evaluator / privacy filter ("DSE" in the paper's code; DESIGN step 6).

For every real training image s (the *source*) the generator draws candidates conditioned on
s's embedding (DiADM pseudo-conditioning). Each candidate c is judged twice:

1. **Privacy, a hard constraint.** The defender verifier scores p(c, s) = P("same patient"),
   the maximum over every scan of s's patient; a candidate with p ≥ ``threshold`` (paper: 0.5)
   is *flagged* and never released, whatever its other scores. (The paper's code compares with
   the source image only and adds the two scores, so a flagged candidate can win.) With a
   ``copy_fn`` (``copy_veto.CopyVeto.ratio``), a candidate closer to some training image, in
   pixels or in the conditioning encoder's space, than real images come to other patients
   (``copy_ratio < 1``) is flagged too: it is a near-copy whatever the verifier says; and, with
   ``identity_quantile``, so is one a defender matches with *any* training patient more surely
   than real images are matched with other patients (the same rule in the verdict's space).
2. **Utility, among the survivors.** The reference classifier's label consistency
   BCE(s, c) = −(1/8) Σ_k [ŷ_k(s) log ŷ_k(c) + (1 − ŷ_k(s)) log(1 − ŷ_k(c))]
   (``evaluation.classifier.consistency.label_consistency``), with ŷ(s) the classifier's output
   on the source image (the paper; ``consistency: "prediction"``) or the source's 0/1 labels y(s)
   (``consistency: "labels"``: the target the release is used for, and no trace of the source
   image's own appearance in the choice); the survivor with the lowest BCE is chosen,
   and the next ``keep`` − 1 lowest are optionally kept as extra data (the paper's thesis that
   diversity is utility: several distinct survivors of one source train better than one).

If every candidate of an attempt is flagged, the source is retried with new seeds and a lower
guidance, g_a = max(g_0 − a·Δg, g_floor) for attempt a = 0, 1, …, ``max_attempts`` − 1 (paper:
Δg = 0.1, no floor, no cap). A source that never passes is **skipped and recorded**, not forced.

Loop shape (what makes it fast). The paper's code handles one source at a time and draws all K
candidates before judging any. Here many sources move in lock step ("a chunk"): in each round
every unfinished source draws its next ``round_size`` (r ≤ K) candidates, all of them in one
batched sampler call per guidance value, then the round is judged at once. A source stops
drawing as soon as it has ``min_survivors`` survivors in its current attempt, or when the
attempt's K candidates are used up. Trade-off of ``min_survivors`` (m):

* m = K reproduces "the most label-consistent of K" exactly (and, with r = K, the paper's
  shape); every source costs ≥ K candidates.
* m = 2 is the least that still *chooses* by label consistency (and yields a second best);
  when most candidates pass, a source costs ≈ 2 candidates instead of K, at the price of
  choosing among fewer survivors (a somewhat higher BCE; measured in notebook 05 and
  ``benchmarks/filter.py``).
* m = ``keep`` (default 4 of K = 16) is the least that can release ``keep`` survivors per source:
  a source stops drawing as soon as it has them, and draws up to K when the veto bites.
* m = 1 releases the first survivor: the cheapest, no label-consistency selection.

Seeds. Candidate j of attempt a of source i gets its own seed (``seeds.sample_seeds``), a packed
integer that is injective in (i, a, j) — retries never reuse another source's seeds (they do in
the paper's code) — and the sampler uses per-sample seeds, so the release does not depend on
the chunk size, the batch size or the order sources are processed in.

Resumability. Sources are processed in chunks of ``chunk_size``; each finished chunk is
written atomically (a temporary directory renamed into place) under ``out_dir``. Restarted
after a crash, finished chunks are read back and only the rest is computed: nothing is lost or
released twice.

Everything model-specific is injected, which keeps this module pure and its tests fast:

    sample_fn(sources (n,) int64, seeds (n,) int64, guidance float) → (n, 1, H, W) in [-1, 1]
    copy_fn(images (n, 1, H, W) float) → (n,) copy ratio (optional; < 1 vetoes)
    defender_fn(sources (n,) int64, images (n, 1, H, W) float) → (n,) P(same patient as source)
    classifier_fn(images (n, 1, H, W) float) → (n, 8) sigmoid outputs
    source_probs: (N_train, 8) consistency targets of the sources, in [0, 1]: the classifier's
        outputs on them, or their labels (``consistency``; the caller builds the array)

Candidates are quantised to uint8 *before* they are judged, so what is scored is exactly what
is released (re-scoring a release with the defender reproduces the audit).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..seeds import ATTEMPT_BITS, CANDIDATE_BITS, sample_seeds
from ..data.imageset import images_to_uint8, uint8_to_tensor
from ..evaluation.classifier.consistency import label_consistency
from ..io import atomic_write_json, to_jsonable
from .release import read_audit_csv

# Filter hyper-parameters (plain dict, EDM2 style); ranges in ``check_filter_params``.
FILTER_DEFAULTS: dict = {
    "k": 16,                 # K: candidates per source per attempt (paper: 4 / 16 / 32), >= 1
    "round_size": 2,         # r: candidates drawn per source per round, 1..K (K = draw all, then judge)
    "min_survivors": 4,      # m: stop drawing once an attempt has m survivors, 1..K (K = paper's choice)
    "keep": 4,               # survivors returned per source, best first (rank 0 .. keep-1), 1..m
    "guidance": 1.4,         # g_0: guidance of the first attempt (paper: 1.4; release script 1.2)
    "guidance_step": 0.1,    # Δg: guidance lowered by this after an all-flagged attempt (paper: 0.1), >= 0
    "guidance_floor": 1.0,   # g_floor: guidance never goes below this, 0..g_0
    "max_attempts": 8,       # attempts per source, retries included (paper: unbounded), >= 1
    "threshold": 0.5,        # flagged if P(same patient) >= threshold, in (0, 1)
    "chunk_size": 128,       # sources judged in lock step and written atomically together, >= 1
    "all_scans": True,       # the defender compares a candidate with every scan of the source's patient
    "veto_recall": None,     # set the veto threshold so the defender flags this share of same-patient val
                             #   pairs, in (0, 1) (e.g. 0.99); None: use ``threshold`` as given
    "defenders": 1,          # D: the veto is a committee, the filter's defender and D − 1 retrained with other
                             #   seeds, each at its own threshold; any one flags → vetoed (``committee_defender_fn``), >= 1
    "copy_quantile": None,   # near-copy veto (copy_veto.py): q in (0, 0.5) of leave-patient-out NN distances; None: off
    "copy_spaces": ["pixels", "encoder"],  # the spaces of the near-copy veto
    "identity_quantile": None,  # identity veto (copy_veto.py, rule (1) in the verdict space (2) of every defender of
                             #   the committee): a candidate a defender matches with SOME training patient more surely
                             #   than this share q of training images are matched with another patient's, q in
                             #   (0, 0.5); None: off (the defenders then compare with the source's patient only)
    "consistency": "prediction",  # the target of label consistency: "prediction" (the classifier's output on
                             #   the source image, the paper) or "labels" (the source's labels, which the release
                             #   carries; the source image's own appearance then plays no part in the choice)
}
COPY_SPACES = ("pixels", "encoder")
CONSISTENCY_TARGETS = ("prediction", "labels")

DECISIONS = ("chosen", "second_best", "kept", "not_best", "flagged", "skipped_source")
RANKED = ("chosen", "second_best", "kept")  # decisions of released survivors: rank 0, 1, >= 2
AUDIT_COLUMNS = ("source_index", "patient_id", "source_name", "attempt", "candidate", "seed", "guidance",
                 "defender_prob", "copy_ratio", "flagged", "bce", "decision", "reason", "source_outcome")



def check_filter_params(params: dict | None) -> dict:
    """``params`` over ``FILTER_DEFAULTS``; unknown keys and out-of-range values raise naming the key."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(FILTER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown filter parameter(s) {unknown}; known: {sorted(FILTER_DEFAULTS)}")
    p = {**FILTER_DEFAULTS, **params}
    for key in ("k", "round_size", "min_survivors", "keep", "max_attempts", "chunk_size", "defenders"):
        if not isinstance(p[key], (int, np.integer)) or isinstance(p[key], bool) or p[key] < 1:
            raise ValueError(f"filter.{key} must be an integer >= 1, got {p[key]!r}")
    if p["k"] > 2**CANDIDATE_BITS:
        raise ValueError(f"filter.k must be <= {2**CANDIDATE_BITS}, got {p['k']}")
    if p["max_attempts"] > 2**ATTEMPT_BITS:
        raise ValueError(f"filter.max_attempts must be <= {2**ATTEMPT_BITS}, got {p['max_attempts']}")
    for key in ("round_size", "min_survivors"):
        if p[key] > p["k"]:
            raise ValueError(f"filter.{key}={p[key]} must be <= filter.k={p['k']}")
    if p["keep"] > p["min_survivors"]:
        raise ValueError(f"filter.keep={p['keep']} must be <= filter.min_survivors={p['min_survivors']}: a source "
                         f"stops drawing at {p['min_survivors']} survivor(s), so it could never keep {p['keep']}")
    if p["copy_quantile"] is not None and not 0 < p["copy_quantile"] < 0.5:
        raise ValueError(f"filter.copy_quantile must be null or in (0, 0.5), got {p['copy_quantile']}")
    if p["identity_quantile"] is not None and not 0 < p["identity_quantile"] < 0.5:
        raise ValueError(f"filter.identity_quantile must be null or in (0, 0.5), got {p['identity_quantile']}")
    spaces = list(p["copy_spaces"] or [])
    if not spaces or any(s not in COPY_SPACES for s in spaces) or len(set(spaces)) != len(spaces):
        raise ValueError(f"filter.copy_spaces must be distinct names from {COPY_SPACES}, got {p['copy_spaces']!r}")
    p["copy_spaces"] = spaces
    if p["consistency"] not in CONSISTENCY_TARGETS:
        raise ValueError(f"filter.consistency must be one of {list(CONSISTENCY_TARGETS)}, got {p['consistency']!r}")
    if p["veto_recall"] is not None and not 0 < p["veto_recall"] < 1:
        raise ValueError(f"filter.veto_recall must be null or in (0, 1), got {p['veto_recall']}")
    if not isinstance(p["all_scans"], bool):
        raise ValueError(f"filter.all_scans must be true or false, got {p['all_scans']!r}")
    if not 0 < p["threshold"] < 1:
        raise ValueError(f"filter.threshold must be in (0, 1), got {p['threshold']}")
    if p["guidance"] < 0 or p["guidance_step"] < 0:
        raise ValueError(f"filter.guidance and filter.guidance_step must be >= 0, got {p['guidance']}, {p['guidance_step']}")
    if not 0 <= p["guidance_floor"] <= p["guidance"]:
        raise ValueError(f"filter.guidance_floor must be in [0, guidance={p['guidance']}], got {p['guidance_floor']}")
    return p


def guidance_at(attempt: int, params: dict) -> float:
    """g_a = max(g_0 − a·Δg, g_floor), rounded to 6 decimals (no float drift between attempts)."""
    return round(max(params["guidance"] - attempt * params["guidance_step"], params["guidance_floor"]), 6)


# --------------------------------------------------------------------------------- results
@dataclass
class FilterResult:
    """What the filter releases, and why.

    images: (M, H, W) uint8; source_index: (M,) int64 into the sources' split; rank: (M,) 0 =
    the chosen sample of its source, 1 = its second best, r = its (r+1)-th best (r < ``keep``).
    audit: one row per drawn candidate (``AUDIT_COLUMNS``) plus one ``skipped_source`` row per
    source that never passed.
    """

    images: np.ndarray
    source_index: np.ndarray
    rank: np.ndarray
    audit: pd.DataFrame

    def select(self, max_rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(images, source_index, rank) of the samples with rank <= max_rank (0: best only)."""
        keep = self.rank <= max_rank
        return self.images[keep], self.source_index[keep], self.rank[keep]


@dataclass
class _Source:
    index: int
    attempt: int = 0
    drawn: int = 0  # candidates drawn in the current attempt
    survivors: list = None  # (bce, candidate j, row id, image)
    outcome: str | None = None

    def __post_init__(self):
        self.survivors = []


def _judge(jobs, sample_fn, defender_fn, classifier_fn, source_probs, copy_fn=None):
    """Draw and score one round: jobs = (sources, seeds, guidances) arrays → (images u8, p, copy ratio, bce)."""
    sources, seeds, guidances = jobs
    images = None
    for g in np.unique(guidances):  # one batched sampler call per guidance value
        sel = np.flatnonzero(guidances == g)
        x = sample_fn(sources[sel], seeds[sel], float(g))
        u8 = images_to_uint8(x)
        if len(u8) != len(sel):
            raise ValueError(f"sample_fn returned {len(u8)} images for {len(sel)} seeds")
        if images is None:
            images = np.empty((len(sources), *u8.shape[1:]), dtype=np.uint8)
        images[sel] = u8
    x = uint8_to_tensor(images)
    prob = np.asarray(defender_fn(sources, x), dtype=np.float64).reshape(-1)
    if prob.shape != (len(sources),):
        raise ValueError(f"defender_fn returned shape {prob.shape} for {len(sources)} candidates")
    if not np.isfinite(prob).all() or (prob < 0).any() or (prob > 1).any():
        raise ValueError("defender_fn must return probabilities in [0, 1] (apply the sigmoid to logits)")
    ratio = np.full(len(sources), np.inf) if copy_fn is None else np.asarray(copy_fn(x), dtype=np.float64).reshape(-1)
    if ratio.shape != (len(sources),) or np.isnan(ratio).any():
        raise ValueError(f"copy_fn must return one non-NaN ratio per candidate, got shape {ratio.shape}")
    bce = label_consistency(source_probs[sources], classifier_fn(x))
    return images, prob, ratio, bce


def filter_sources(sources, sample_fn: Callable, defender_fn: Callable, classifier_fn: Callable, source_probs,
                   params: dict, stream: int, patient_ids=None, names=None, copy_fn: Callable | None = None):
    """Run the filter on one chunk of sources in lock step → (images, source_index, rank, audit rows).

    Pure given the injected functions: see the module docstring. ``stream`` selects the seed
    stream (``seeds.stream_id``). ``patient_ids``/``names``: optional arrays over the whole split,
    copied into the audit rows.
    """
    p = check_filter_params(params)
    source_probs = np.asarray(source_probs)
    states = [_Source(int(s)) for s in np.asarray(sources, dtype=np.int64)]
    rows: list[dict] = []
    released: list[tuple[int, int, int, np.ndarray]] = []  # (position, rank, source, image)
    active = list(range(len(states)))

    def base_row(st: _Source) -> dict:
        return {"source_index": st.index,
                "patient_id": "" if patient_ids is None else str(patient_ids[st.index]),
                "source_name": "" if names is None else str(names[st.index])}

    while active:
        job_pos, job_j = [], []
        for pos in active:  # every unfinished source draws its next r candidates
            st = states[pos]
            for j in range(st.drawn, min(st.drawn + p["round_size"], p["k"])):
                job_pos.append(pos)
                job_j.append(j)
        job_pos, job_j = np.array(job_pos), np.array(job_j, dtype=np.int64)
        src = np.array([states[q].index for q in job_pos], dtype=np.int64)
        att = np.array([states[q].attempt for q in job_pos], dtype=np.int64)
        guid = np.array([guidance_at(int(a), p) for a in att])
        seeds = sample_seeds(stream, src, att, job_j)
        images, prob, ratio, bce = _judge((src, seeds, guid), sample_fn, defender_fn, classifier_fn, source_probs,
                                          copy_fn)
        for n in range(len(job_pos)):
            st = states[job_pos[n]]
            same, copy = bool(prob[n] >= p["threshold"]), bool(ratio[n] < 1.0)
            flagged = same or copy
            row = base_row(st) | {"attempt": int(att[n]), "candidate": int(job_j[n]), "seed": int(seeds[n]),
                                  "guidance": float(guid[n]), "defender_prob": float(prob[n]),
                                  "copy_ratio": float(ratio[n]), "flagged": flagged, "bce": float(bce[n])}
            if flagged:  # hard constraint: a flagged candidate is never released
                why = ([f"defender P(same patient)={prob[n]:.3f} >= {p['threshold']}"] if same else []) + \
                      ([f"near-copy of a training image or patient (copy ratio {ratio[n]:.2f} < 1)"] if copy else [])
                row |= {"decision": "flagged", "reason": "; ".join(why)}
            else:
                st.survivors.append((float(bce[n]), int(job_j[n]), len(rows), images[n]))
            rows.append(row)
            st.drawn += 1
        still = []
        for pos in active:
            st = states[pos]
            enough = len(st.survivors) >= p["min_survivors"]
            exhausted = st.drawn >= p["k"]
            if enough or (exhausted and st.survivors):
                ranked = sorted(st.survivors, key=lambda t: (t[0], t[1]))  # lowest BCE; ties: first drawn
                n_surv = len(ranked)
                for r, (_, _, row_id, image) in enumerate(ranked):
                    if r == 0:
                        rows[row_id] |= {"decision": "chosen", "reason": f"lowest BCE of {n_surv} survivor(s)"}
                        released.append((pos, 0, st.index, image))
                    elif r < p["keep"]:
                        decision = "second_best" if r == 1 else "kept"
                        rows[row_id] |= {"decision": decision, "reason": f"BCE rank {r + 1} of {n_surv} survivors, kept"}
                        released.append((pos, r, st.index, image))
                    else:
                        rows[row_id] |= {"decision": "not_best", "reason": f"BCE rank {r + 1} of {n_surv} survivors"}
                st.outcome, st.survivors = "accepted", []
            elif exhausted:  # all K of this attempt flagged
                if st.attempt + 1 >= p["max_attempts"]:
                    st.outcome = "skipped"
                    rows.append(base_row(st) | {
                        "attempt": st.attempt, "candidate": -1, "seed": -1, "guidance": guidance_at(st.attempt, p),
                        "defender_prob": float("nan"), "copy_ratio": float("nan"), "flagged": False, "bce": float("nan"),
                        "decision": "skipped_source",
                        "reason": f"all {p['k']} candidates flagged in each of {st.attempt + 1} attempts "
                                  f"(guidance down to {guidance_at(st.attempt, p)}); not released"})
                else:
                    st.attempt, st.drawn = st.attempt + 1, 0
                    still.append(pos)
            else:
                still.append(pos)
        active = still
    outcome = {st.index: st.outcome for st in states}
    for row in rows:
        row["source_outcome"] = outcome[row["source_index"]]
    released.sort(key=lambda t: (t[0], t[1]))
    if released:
        images_out = np.stack([t[3] for t in released])
    else:
        images_out = np.zeros((0, 0, 0), dtype=np.uint8)
    position = {st.index: pos for pos, st in enumerate(states)}  # audit order: source, attempt, candidate
    rows.sort(key=lambda r: (position[r["source_index"]], r["attempt"], r["candidate"] if r["candidate"] >= 0 else 2**31))
    return (images_out, np.array([t[2] for t in released], dtype=np.int64),
            np.array([t[1] for t in released], dtype=np.int64), rows)


# ------------------------------------------------------------------------- chunks on disk
_MANIFEST = "filter_manifest.json"


def _chunk_name(i: int) -> str:
    return f"chunk_{i:06d}"


def _write_chunk(out_dir: Path, i: int, images, source_index, rank, audit: pd.DataFrame) -> None:
    """Write chunk ``i`` into a temporary directory and rename it into place (atomic)."""
    final = out_dir / _chunk_name(i)
    tmp = out_dir / f".{_chunk_name(i)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "images.npy", images, allow_pickle=False)
    np.save(tmp / "source_index.npy", source_index, allow_pickle=False)
    np.save(tmp / "rank.npy", rank, allow_pickle=False)
    audit.to_csv(tmp / "audit.csv", index=False)
    os.replace(tmp, final)


def _read_chunk(out_dir: Path, i: int):
    d = out_dir / _chunk_name(i)
    audit = read_audit_csv(d / "audit.csv")
    return (np.load(d / "images.npy", allow_pickle=False), np.load(d / "source_index.npy", allow_pickle=False),
            np.load(d / "rank.npy", allow_pickle=False), audit)


def _audit_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(AUDIT_COLUMNS))
    return frame.astype({"source_index": np.int64, "attempt": np.int64, "candidate": np.int64, "seed": np.int64,
                         "guidance": float, "defender_prob": float, "copy_ratio": float, "flagged": bool,
                         "bce": float})


def run_filter(sources, sample_fn: Callable, defender_fn: Callable, classifier_fn: Callable, source_probs,
               params: dict | None = None, stream: int = 0, out_dir: str | os.PathLike | None = None,
               patient_ids=None, names=None, on_chunk: Callable | None = None, progress: bool = True,
               copy_fn: Callable | None = None) -> FilterResult:
    """Filter every source in ``sources`` (indices into ``source_probs``'s split), chunk by chunk.

    Args:
        sources: (N,) int indices of the source images (each at most once).
        sample_fn, defender_fn, classifier_fn, source_probs: see the module docstring.
        params: ``FILTER_DEFAULTS`` overrides (``check_filter_params``).
        stream: the seed stream (``seeds.stream_id(profile_seed, ...)``), 0..65535.
        out_dir: where finished chunks are written atomically; a rerun with the same arguments
            resumes from them (a manifest refuses a rerun with different ones). None: in memory.
        patient_ids, names: optional arrays over the split, copied into the audit table.
        on_chunk: ``on_chunk(i, n_chunks)`` called after chunk i is committed (tests inject a
            crash here).
        copy_fn: the near-copy veto (``copy_veto.CopyVeto.ratio``); None: the defender alone.
        progress: a tqdm bar over sources.
    Returns a ``FilterResult`` in the order of ``sources`` (a source's ranks in increasing order).
    """
    p = check_filter_params(params)
    sources = np.asarray(sources, dtype=np.int64)
    if sources.ndim != 1:
        raise ValueError(f"sources must be a 1-d index array, got shape {sources.shape}")
    if len(np.unique(sources)) != len(sources):
        raise ValueError("sources contains duplicate indices: a source would be released twice")
    source_probs = np.asarray(source_probs)
    if source_probs.ndim != 2 or (len(sources) and sources.max() >= len(source_probs)) or (len(sources) and sources.min() < 0):
        raise ValueError(f"source_probs {source_probs.shape} must be (N_train, 8) covering every source index")
    bounds = list(range(0, len(sources), p["chunk_size"])) + [len(sources)]
    n_chunks = len(bounds) - 1
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"params": to_jsonable(p), "stream": int(stream),
                    "sources_sha256": hashlib.sha256(sources.tobytes()).hexdigest()}
        path = out_dir / _MANIFEST
        if path.exists():
            if json.loads(path.read_text()) != json.loads(json.dumps(manifest)):
                raise ValueError(f"{path}: chunks in {out_dir} were made with other filter arguments; "
                                 f"remove the directory to start over")
        else:
            atomic_write_json(path, manifest)
    parts = []
    bar = tqdm(total=len(sources), desc="filter (sources)", disable=not progress, leave=False)
    for i in range(n_chunks):
        chunk = sources[bounds[i]:bounds[i + 1]]
        if out_dir is not None and (out_dir / _chunk_name(i)).exists():
            part = _read_chunk(out_dir, i)
        else:
            images, src, rank, rows = filter_sources(chunk, sample_fn, defender_fn, classifier_fn, source_probs, p,
                                                     stream, patient_ids, names, copy_fn)
            part = (images, src, rank, _audit_frame(rows))
            if out_dir is not None:
                _write_chunk(out_dir, i, *part)
        parts.append(part)
        bar.update(len(chunk))
        if on_chunk is not None:
            on_chunk(i, n_chunks)
    bar.close()
    images = [pt[0] for pt in parts if len(pt[0])]
    image_shape = images[0].shape[1:] if images else (0, 0)
    audit = pd.concat([pt[3] for pt in parts], ignore_index=True) if parts else _audit_frame([])
    return FilterResult(np.concatenate(images) if images else np.zeros((0, *image_shape), np.uint8),
                        np.concatenate([pt[1] for pt in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
                        np.concatenate([pt[2] for pt in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
                        _audit_frame(audit.to_dict("records")) if len(audit) else audit)


# ----------------------------------------------------------------- adapters for real models
def verifier_defender_fn(verifier, source_images: torch.Tensor, batch_size: int = 256, patient_ids=None) -> Callable:
    """``defender_fn`` from a ``Verifier``: sources embedded once; each candidate scored against its
    source, or — with ``patient_ids`` (one per source image) — against every image of the
    source's patient, keeping the highest P(same patient)."""
    src_emb = verifier.embed(source_images, batch_size=batch_size)
    if patient_ids is not None:
        pid = np.asarray(patient_ids).astype(str)
        if len(pid) != len(src_emb):
            raise ValueError(f"{len(pid)} patient ids for {len(src_emb)} source images")
        _, codes = np.unique(pid, return_inverse=True)
        scans = [np.flatnonzero(codes == c) for c in codes]  # per source image: its patient's images

    def fn(sources, images):
        emb = verifier.embed(images, batch_size=batch_size)
        sources = np.asarray(sources, dtype=np.int64)
        if patient_ids is None:
            logits = verifier.score_pairs(src_emb[torch.as_tensor(sources)], emb)
            return verifier.probability(logits).numpy()
        cand = np.concatenate([np.full(len(scans[s]), n) for n, s in enumerate(sources)])
        other = np.concatenate([scans[s] for s in sources])
        logits = verifier.score_pairs(src_emb[torch.from_numpy(other)], emb[torch.from_numpy(cand)])
        best = torch.full((len(sources),), -torch.inf).scatter_reduce(0, torch.from_numpy(cand), logits, "amax")
        return verifier.probability(best).numpy()

    return fn


def committee_defender_fn(members: list[tuple[Callable, float]]) -> tuple[Callable, float]:
    """(defender_fn, threshold) of a committee of defenders, each ``(defender_fn, t_i)`` with its
    own veto threshold: a candidate is flagged when any member has P_i >= t_i.

    The committee's score is read against the first member's threshold t_1: each P_i is mapped
    piecewise-linearly, [0, t_i] → [0, t_1] and [t_i, 1] → [t_1, 1], and the score is the largest
    mapped value, so score >= t_1 ⇔ some P_i >= t_i. It is monotone in every P_i and lies in
    [0, 1]; with one member it is that member's P unchanged. The filter records this score as the
    audit's ``defender_prob``.
    """
    if not members:
        raise ValueError("committee_defender_fn needs at least one (defender_fn, threshold) member")
    for _, t in members:
        if not 0 < t < 1:
            raise ValueError(f"every committee threshold must be in (0, 1), got {t}")
    t1 = float(members[0][1])
    if len(members) == 1:
        return members[0][0], t1

    def onto_first(p: np.ndarray, t: float) -> np.ndarray:
        return np.where(p < t, p / t * t1, t1 + (p - t) / (1 - t) * (1 - t1))

    def fn(sources, images):
        return np.max([onto_first(np.asarray(f(sources, images), dtype=np.float64), t) for f, t in members], axis=0)

    return fn, t1


def classifier_fn_from(classifier, batch_size: int = 256) -> Callable:
    """``classifier_fn`` from the reference ``Classifier`` (sigmoid outputs)."""
    return lambda images: classifier.predict_proba(images, batch_size=batch_size)
