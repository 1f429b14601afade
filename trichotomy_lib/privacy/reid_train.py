"""Training the siamese verifier: same/different-patient pairs, augmentation, Adam + BCE.

Pairs (Packhäuser et al. 2022; paper code): within one split, every same-patient pair
(capped per patient) plus as many random different-patient pairs — a balanced set. The
loss is BCE on the verifier's logit w·|e1 − e2| + b, plus (``retrieval_loss`` > 0) an
in-batch retrieval term on the same logit that ranks each image's own patient above every
other patient in the batch; the epoch with the best validation score is kept.
``select`` chooses the kept epoch by val pair AUROC (the paper's) or by val retrieval
precision@1; ``lr_schedule`` keeps the rate constant (the paper's) or decays it on a cosine.
Deterministic given the seed: initialisation, the per-epoch shuffles and augmentations come from generators seeded with ``seeds.derive(seed, ...)``, so a run resumed
from its checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from .. import seeds
from ..data.imageset import ImageSet
from ..device import autocast, default_device, resolve_precision
from ..checkpoint import load_training_state, remove_training_state, save_training_state
from ..evaluation.retrieval import precision_at_1
from .reid_model import MODEL_DEFAULTS, Verifier

# The profile section ``reid`` (plain dict; ``config.section`` rejects unknown keys).
REID_DEFAULTS: dict = {
    # architecture (see reid_model.MODEL_DEFAULTS; image_size/in_channels come from the data)
    "backbone": "cnn",          # "cnn" | "resnet50"
    "backbone_weights": None,   # resnet50: local .safetensors initialisation (None: random init)
    "width": 16,                # cnn channels of the first stage (8–64)
    "stages": 3,                # cnn stages (each halves the resolution)
    "pool": "flatten",          # cnn pooling: "flatten" (keeps layout) | "avg" (global average)
    "embed_dim": 128,           # sigmoid embedding size (paper: 128)
    # training
    "epochs": 15,               # upper bound on epochs (1–1000)
    "patience": 5,              # stop after this many epochs without a better val score (``select``; None: never)
    "batch_size": 64,           # pairs per step (2×images through the encoder)
    "lr": 1e-3,                 # Adam learning rate (the peak, under a schedule)
    "lr_schedule": "constant",  # "constant" (the paper's) | "cosine": lr · ½(1 + cos(π t / T)) per step, T the steps of
                                #   all ``epochs`` (patience may stop it before the rate has decayed)
    "weight_decay": 0.0,        # Adam L2 penalty
    "retrieval_loss": 0.0,      # weight λ of the in-batch retrieval term (``retrieval_loss``; >= 0, 0: BCE alone,
                                #   the paper's recipe). Pair BCE separates one random pair at a time; λ = 1 ranks
                                #   the right patient first among the batch's 2·batch_size images
                                #   (``benchmarks/reid_retrieval.py``)
    "precision": "fp32",        # training step: "fp32", "bf16" (autocast) or "auto" (bf16 where the device has it
                                #   natively, ``device.native_bf16``); embeddings are always computed in fp32. The
                                #   default profile's recipe (with the retrieval term) trains about 1.2x faster in bf16 at
                                #   the same test precision@1 (``benchmarks/reid_retrieval.py --set reid.precision=auto``)
    "max_pos_per_patient": 45,  # cap on same-patient pairs per patient (None: all n(n−1)/2)
    "max_pairs_per_epoch": None,  # subsample this many pairs per epoch (None: all)
    "fresh_negatives": True,    # draw new random different-patient pairs every epoch (same count; "sampled" only)
    "negatives": "sampled",     # where the BCE's different-patient pairs come from: "sampled" (the paper's: random
                                #   pairs, as many as positives, each its own pair of images in the batch) |
                                #   "in_batch" (a batch holds positive pairs only; a_i against b_(i+1) of the same
                                #   batch is its negative, so no encoder pass is spent on a negative and an epoch
                                #   is the positives: half the steps, every image an anchor of the retrieval term)
    "augment_shift": 0.06,      # random translation, fraction of the image size (0: off)
    "augment_scale": 0.05,      # random zoom ±fraction (0: off)
    "augment_rotate": 5.0,      # random rotation ±degrees (0: off)
    "augment_intensity": 0.1,   # random contrast and brightness ±fraction (0: off)
    "augment_noise": 0.02,      # Gaussian pixel noise σ (images in [-1, 1]; 0: off)
    "extra_patients": 0,        # PhantomCXR only: fresh patients (own seed stream) added to the defender's
                                #   training patients (0: off)
    "auditor_patients": 500,    # PhantomCXR only: the auditor's own fresh patients, its whole training and
                                #   validation population — the analogue of a public re-id dataset (>= 10)
    "select": "auroc",          # which epoch is kept: "auroc" (the best val pair AUROC, the paper's) |
                                #   "precision_at_1" (the best val retrieval precision@1 in the embedding, ties broken
                                #   by AUROC; what singling out needs) — patience counts from the kept epoch either way
    "eval_batch_size": 256,     # images per forward pass when embedding
    # evaluation (read by the notebook's evaluation, not by training)
    "n_boot": 1000,             # bootstrap resamples for the metric CIs
}

# Config keys that change what training produces (the stages hash exactly these).
TRAIN_KEYS: tuple[str, ...] = tuple(k for k in REID_DEFAULTS if k != "n_boot")

# The resume state inside ``train_verifier(checkpoint_dir=...)``: model, best weights, Adam, history.
TRAINING_STATE_FILE = "training_state.safetensors"


# ------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pairs:
    """Image index pairs (a[i], b[i]) into one ImageSet, ``label`` 1 = same patient."""

    a: np.ndarray
    b: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def n_pos(self) -> int:
        return int(self.label.sum())


def _groups(patient_ids: np.ndarray) -> dict[str, np.ndarray]:
    patient_ids = np.asarray(patient_ids).astype(str)
    order = np.argsort(patient_ids, kind="stable")
    uniq, starts = np.unique(patient_ids[order], return_index=True)
    return {p: np.sort(idx) for p, idx in zip(uniq, np.split(order, starts[1:]))}


def sample_pairs(patient_ids, seed: int, max_pos_per_patient: int | None = None, split: str = "split") -> Pairs:
    """All same-patient pairs (at most ``max_pos_per_patient`` per patient, drawn at random)
    plus the same number of distinct random different-patient pairs, all within the given
    split. Positives first, then negatives. Raises naming ``split`` if there is no patient
    with two images or fewer than two patients."""
    patient_ids = np.asarray(patient_ids).astype(str)
    if patient_ids.ndim != 1 or len(patient_ids) == 0:
        raise ValueError(f"split {split!r} is empty: no images to build pairs from")
    rng = np.random.default_rng(seed)
    groups = _groups(patient_ids)
    pos = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        ii, jj = np.triu_indices(len(idx), k=1)
        pp = np.stack([idx[ii], idx[jj]], 1)
        if max_pos_per_patient is not None and len(pp) > max_pos_per_patient:
            pp = pp[np.sort(rng.choice(len(pp), int(max_pos_per_patient), replace=False))]
        pos.append(pp)
    if not pos:
        raise ValueError(f"split {split!r}: no patient has two or more images ({len(groups)} patients, "
                         f"{len(patient_ids)} images), so there are no same-patient pairs")
    if len(groups) < 2:
        raise ValueError(f"split {split!r}: only one patient, so there are no different-patient pairs")
    pos = np.concatenate(pos)
    neg = sample_negatives(patient_ids, len(pos), rng)
    ab = np.concatenate([pos, neg]).astype(np.int64)
    label = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return Pairs(ab[:, 0], ab[:, 1], label)


def sample_negatives(patient_ids, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random pairs (i < j) of images of different patients → (n', 2), n' = n
    unless the split has fewer such pairs. Images are drawn uniformly."""
    patient_ids = np.asarray(patient_ids).astype(str)
    total = len(patient_ids)
    _, counts = np.unique(patient_ids, return_counts=True)
    n = min(int(n), (total * total - int((counts.astype(np.int64) ** 2).sum())) // 2)
    seen, neg = set(), []
    while len(neg) < n:
        i, j = rng.integers(0, total, size=(2, 2 * (n - len(neg)) + 16))
        for x, y in zip(i.tolist(), j.tolist()):
            key = (min(x, y), max(x, y))
            if patient_ids[x] != patient_ids[y] and key not in seen:
                seen.add(key)
                neg.append(key)
                if len(neg) == n:
                    break
    return np.asarray(neg, dtype=np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------ augmentation
def augment(x: torch.Tensor, params: dict, generator: torch.Generator) -> torch.Tensor:
    """Random pose (shift/zoom/rotation, one affine warp) and exposure (contrast, brightness,
    noise) per image, so identity must be recognised across scans, not pixels."""
    n = len(x)
    u = lambda: torch.rand(n, generator=generator) * 2 - 1  # noqa: E731  U(-1, 1)
    shift, scale, rot = params["augment_shift"], params["augment_scale"], params["augment_rotate"]
    if shift or scale or rot:
        angle, zoom = u() * math.radians(rot), 1 + u() * scale
        tx, ty = u() * 2 * shift, u() * 2 * shift  # normalised coordinates span 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if params["augment_intensity"]:
        a = params["augment_intensity"]
        x = x * (1 + a * u()).to(x)[:, None, None, None] + (a * u()).to(x)[:, None, None, None]
    if params["augment_noise"]:
        x = x + params["augment_noise"] * torch.randn(x.shape, generator=generator).to(x)
    return x


# ----------------------------------------------------------------------------- training
def check_retrieval_weight(value) -> float:
    """``reid.retrieval_loss`` as a float; a ValueError naming it unless a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"reid.retrieval_loss must be a number >= 0 (0: pair BCE alone), got {value!r}")
    return float(value)


LR_SCHEDULES = ("constant", "cosine")
SELECT = ("auroc", "precision_at_1")
NEGATIVES = ("sampled", "in_batch")


def check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else a ValueError naming ``reid.<name>`` and the choices."""
    if value not in choices:
        raise ValueError(f"reid.{name}={value!r}: choose one of {list(choices)}")
    return value


def learning_rate(p: dict, step: int, total_steps: int) -> float:
    """The Adam rate at ``step`` of ``total_steps``: ``lr``, or ``lr · ½(1 + cos(π step / total_steps))``."""
    if p["lr_schedule"] == "constant":
        return float(p["lr"])
    return float(p["lr"]) * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def in_batch_pairs(n: int, patients) -> tuple[np.ndarray, np.ndarray]:
    """Negatives of a batch of ``n`` positive pairs (a_i, b_i): (a_i, b_(i+1 mod n)).

    ``patients``: (2n,) the patient of each image, a's then b's. Returns ``(i, j)`` index arrays
    into a and b of the pairs whose two images are of different patients (a batch may hold two
    pairs of one patient; that pair is dropped, not mislabelled). Empty for n = 1."""
    patients = np.asarray(patients).astype(str)
    if len(patients) != 2 * n:
        raise ValueError(f"{len(patients)} patient ids for a batch of {n} pairs (need 2 x {n})")
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i = np.arange(n)
    j = (i + 1) % n
    keep = patients[i] != patients[n + j]
    return i[keep], j[keep]


def retrieval_loss(model: Verifier, e: torch.Tensor, patients) -> torch.Tensor:
    """Multi-positive contrastive loss over a batch, scored by the verifier's own head.

    With S_ij = w·|e_i − e_j| + b for every two images of the batch (the logit the verifier
    scores pairs with), each image i that has another image of its patient in the batch adds
    L_i = −log( Σ_{p ∈ P(i)} exp S_ip / Σ_{j ≠ i} exp S_ij ), P(i) = the other images of i's
    patient (Khosla et al. 2020, supervised contrastive, with the head as similarity). Every
    other patient's image is a negative, so the head learns to rank the right patient first —
    retrieval — rather than only to separate one random pair from another.

    Args:
        model: the verifier (its ``head`` scores the pairs).
        e: (N, D) embeddings of the batch, differentiable.
        patients: (N,) patient of each row.

    Returns the mean of L_i over the images with a positive (a 0 that keeps the graph when none has one).
    """
    patients = np.asarray(patients).astype(str)
    if len(patients) != len(e):
        raise ValueError(f"{len(e)} embeddings for {len(patients)} patient ids")
    _, pid = np.unique(patients, return_inverse=True)
    pid = torch.from_numpy(pid).to(e.device)
    s = model.head((e[:, None, :] - e[None, :, :]).abs()).squeeze(-1).float()   # (N, N) logits
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    same = (pid[:, None] == pid[None, :]) & ~eye
    anchors = same.any(1)
    if not anchors.any():
        return s.sum() * 0.0
    s = s.masked_fill(eye, float("-inf"))
    log_all = torch.logsumexp(s[anchors], 1)
    log_pos = torch.logsumexp(s[anchors].masked_fill(~same[anchors], float("-inf")), 1)
    return (log_all - log_pos).mean()


def validation_scores(model: Verifier, val: ImageSet, val_pairs: Pairs, batch_size: int = 256) -> dict:
    """``{"auroc", "precision_at_1"}`` of the verifier on the val split (one embedding pass)."""
    emb = model.embed(val, batch_size=batch_size)
    logits = model.score_pairs(emb[torch.from_numpy(val_pairs.a)], emb[torch.from_numpy(val_pairs.b)])
    return {"auroc": float(roc_auc_score(val_pairs.label, logits.numpy())),
            "precision_at_1": precision_at_1(emb, val.patient_ids)["value"]}


def train_verifier(train: ImageSet, val: ImageSet, params: dict, seed: int, pairs: Pairs | None = None,
                   val_pairs: Pairs | None = None, checkpoint_dir: str | Path | None = None, progress: bool = True,
                   desc: str = "reid") -> tuple[Verifier, dict]:
    """Train a verifier on pairs of ``train``; keep the epoch with the best ``select`` score on ``val``.

    Args:
        train, val: ImageSets (patient-disjoint). params: the ``reid`` section (``REID_DEFAULTS``
            merged with the profile). seed: this verifier's seed (init, shuffles, augmentation).
        pairs: training pairs of ``train`` (default: ``sample_pairs`` with
            ``seeds.derive(seed, "pairs")`` and ``max_pos_per_patient``).
        val_pairs: pairs of ``val`` (default: ``sample_pairs`` with ``seeds.derive(seed, "val_pairs")``).
        checkpoint_dir: where the training state goes after every epoch (``TRAINING_STATE_FILE``,
            see ``trichotomy_lib.checkpoint``); an existing one is resumed, and it is removed
            once training ends.

    Returns ``(model in eval mode with the best epoch's weights, history)``; history holds
    per-epoch ``loss``, ``val_auroc``, ``val_precision_at_1``, ``lr`` (at the epoch's end), and ``best_epoch``,
    ``best_val_auroc`` (the kept epoch's), ``n_pairs``.
    """
    from tqdm.auto import tqdm

    unknown = sorted(set(params) - set(REID_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown reid parameter(s) {unknown}; known: {sorted(REID_DEFAULTS)}")
    p = {**REID_DEFAULTS, **params}
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"train ({len(train)} images) and val ({len(val)} images) must both be non-empty")
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(f"train images are {train.images.shape[1:]}, val images {val.images.shape[1:]}: sizes differ")
    if int(p["epochs"]) < 1 or int(p["batch_size"]) < 1 or not p["lr"] > 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1, lr > 0; got {p['epochs']}, {p['batch_size']}, {p['lr']}")
    lam = check_retrieval_weight(p["retrieval_loss"])
    check_choice("lr_schedule", p["lr_schedule"], LR_SCHEDULES)
    select = check_choice("select", p["select"], SELECT)
    in_batch = check_choice("negatives", p["negatives"], NEGATIVES) == "in_batch"
    patient_ids = np.asarray(train.patient_ids).astype(str)
    if pairs is None:
        pairs = sample_pairs(train.patient_ids, seeds.derive(seed, "pairs"), p["max_pos_per_patient"], split="train")
    if val_pairs is None:
        val_pairs = sample_pairs(val.patient_ids, seeds.derive(seed, "val_pairs"), split="val")

    device = default_device()
    precision = resolve_precision(p["precision"], device, "reid.precision")
    arch = {k: p[k] for k in MODEL_DEFAULTS if k in p}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.derive(seed, "init"))
        model = Verifier(**arch, image_size=train.image_size, in_channels=1,
                         backbone_weights=p["backbone_weights"]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))

    history = {"loss": [], "val_auroc": [], "val_precision_at_1": [], "lr": [], "best_epoch": -1,
               "best_val_auroc": -math.inf, "best_score": (-math.inf, -math.inf),
               "n_pairs": len(pairs), "n_pos": pairs.n_pos, "n_val_pairs": len(val_pairs), "precision": precision}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state_file = Path(checkpoint_dir) / TRAINING_STATE_FILE if checkpoint_dir is not None else None
    start = 0
    if state_file is not None and state_file.exists():
        state = load_training_state(state_file, modules={"model": model}, optimizers={"adam": opt})
        best_state = state.state_dict("best", device)
        history, start = state.meta["history"], state.meta["epoch"] + 1

    if in_batch:                                   # the positives; negatives are formed inside each batch
        keep = pairs.label == 1
        positives = Pairs(pairs.a[keep], pairs.b[keep], pairs.label[keep])
    epoch_size = pairs.n_pos if in_batch else len(pairs)
    n_epoch = epoch_size if p["max_pairs_per_epoch"] is None else min(epoch_size, int(p["max_pairs_per_epoch"]))
    bs = int(p["batch_size"])
    steps_per_epoch = -(-n_epoch // bs)
    total_steps = steps_per_epoch * int(p["epochs"])
    bar = tqdm(range(start, int(p["epochs"])), desc=desc, unit="epoch", disable=not progress)
    for epoch in bar:
        if p["patience"] is not None and epoch - history["best_epoch"] > int(p["patience"]):
            break
        g = seeds.torch_generator(seed, "epoch", epoch)
        if in_batch:
            epoch_pairs = positives
        elif p["fresh_negatives"] and epoch > 0:   # epoch 0 uses the given pairs as they are
            neg = sample_negatives(train.patient_ids, len(pairs) - pairs.n_pos,
                                   seeds.rng(seed, "negatives", epoch))
            pos = pairs.label == 1
            epoch_pairs = Pairs(np.concatenate([pairs.a[pos], neg[:, 0]]), np.concatenate([pairs.b[pos], neg[:, 1]]),
                                np.concatenate([pairs.label[pos], np.zeros(len(neg), np.int64)]))
        else:
            epoch_pairs = pairs
        order = torch.randperm(len(epoch_pairs), generator=g)[:n_epoch].numpy()
        model.train()
        total = 0.0
        for i, s in enumerate(range(0, n_epoch, bs)):
            lr = learning_rate(p, epoch * steps_per_epoch + i, total_steps)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[s:s + bs]
            x = torch.cat([train.tensor(epoch_pairs.a[idx]), train.tensor(epoch_pairs.b[idx])])
            x = augment(x, p, g).to(device)
            n = len(idx)
            who = np.concatenate([patient_ids[epoch_pairs.a[idx]], patient_ids[epoch_pairs.b[idx]]])
            with autocast(device, precision):
                e = model.embedding(x)                 # one pass over both sides (shared encoder)
                ea, eb = e[:n], e[n:]
                y = epoch_pairs.label[idx]
                if in_batch:                           # + (a_i, b_(i+1)) of different patients, label 0
                    ni, nj = in_batch_pairs(n, who)
                    ea, eb = torch.cat([ea, ea[ni]]), torch.cat([eb, eb[nj]])
                    y = np.concatenate([y, np.zeros(len(ni), np.int64)])
                logits = model.head_logits(ea, eb).float()
            y = torch.from_numpy(y).float().to(device)
            loss = F.binary_cross_entropy_with_logits(logits, y)
            if lam:
                loss = loss + lam * retrieval_loss(model, e.float(), who)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n
        val_scores = validation_scores(model, val, val_pairs, int(p["eval_batch_size"]))
        auroc = val_scores["auroc"]
        history["loss"].append(total / n_epoch)
        history["val_auroc"].append(auroc)
        history["val_precision_at_1"].append(val_scores["precision_at_1"])
        history["lr"].append(lr)
        score = (auroc,) if select == "auroc" else (val_scores["precision_at_1"], auroc)
        if score > tuple(history["best_score"]):
            history["best_val_auroc"], history["best_epoch"], history["best_score"] = auroc, epoch, score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{total / n_epoch:.3f}", val_auroc=f"{auroc:.3f}",
                        val_p1=f"{val_scores['precision_at_1']:.3f}")
        if state_file is not None:
            save_training_state(state_file, modules={"model": model, "best": best_state}, optimizers={"adam": opt},
                                meta={"epoch": epoch, "history": history})
    model.load_state_dict(best_state)
    model.eval()
    if state_file is not None:
        remove_training_state(state_file)
    return model, history
