"""The reference classifier (DESIGN step 3): a multi-label classifier of the 8 findings.

It is the project's utility yardstick twice over:

- trained on the real training split and tested on the real test split it gives the
  real-data baseline row of the paper's main table (per-class and mean AUROC);
- trained on a synthetic release (labels of each sample's source image) and tested on the
  same real test split it gives that release's utility (DESIGN step 8);
- its sigmoid outputs score *label consistency* in the privacy filter (DESIGN step 6): the
  mean over the 8 classes of the binary cross-entropy between the predictions on a source
  image and on a candidate (``label_consistency``).

Training follows the CheXNet recipe the paper uses (PAPER_NOTES, "Downstream utility"):
sigmoid outputs, binary cross-entropy, Adam, and the epoch with the lowest loss on the *real*
validation split is the one kept. ``fit_classifier`` is a pure function of its inputs and
``seed`` (bit-identical on CPU), so the same call serves real and synthetic training sets.

Weights are stored as safetensors with a JSON file of hyperparameters and the training
history; loading never unpickles anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .. import config as config_mod
from ..data.imageset import LABELS, N_LABELS, ImageSet
from ..device import default_device
from ..io import atomic_path, atomic_write_json, to_jsonable
from .classifier_nets import ARCHS, build_net, n_parameters

# Preset for PhantomCXR at 32 px on CPU (the profiles override what they need).
DEFAULTS: dict = {
    "arch": "cnn",          # "cnn" (SmallCNN, CPU-sized) or "densenet121" (CheXNet; torchvision)
    "width": 32,            # cnn: channels of the first block, doubled per block (4–128)
    "depth": 3,             # cnn: conv blocks, each halving the resolution (1–log2(size))
    "weights": None,        # densenet121: local .safetensors of torchvision ImageNet weights, relative
                            #   to the project root or absolute (None: random init)
    "epochs": 20,           # maximum number of epochs (>= 1)
    "patience": None,       # stop after this many epochs without a lower val loss (None: all epochs)
    "batch_size": 64,       # training batch size (paper: 16 for DenseNet-121)
    "lr": 2e-3,             # Adam learning rate (paper: 1e-4 for DenseNet-121)
    "lr_schedule": "cosine",# "constant" (paper) or "cosine" (decay to 0 over `epochs`, per step)
    "weight_decay": 0.0,    # Adam (L2) weight decay
    "augment": {            # light augmentation, drawn per image from the seed (no flips by default:
        "translate": 0.06,  #   the heart is on the left) — max shift, fraction of the image side
        "scale": 0.05,      #   max zoom in/out, fraction
        "rotate": 5.0,      #   max rotation, degrees
        "brightness": 0.05, #   max additive intensity shift, in [-1, 1] image units
        "contrast": 0.1,    #   max multiplicative contrast change, fraction
        "hflip": False,     #   random horizontal flips
    },
    "eval_batch_size": 256, # batch size of predictions
    "n_boot": 1000,         # bootstrap resamples for the AUROC CIs (evaluation only)
}

# Label-consistency reference values from the paper's code (PAPER_NOTES, "Consistency").
PAPER_CONSISTENCY = {"sample vs its source": 0.106, "same patient": 0.166, "different patients": 0.213}

_FORMAT = "trichotomy-classifier"
_WEIGHTS_FILE, _META_FILE = "classifier.safetensors", "classifier.json"


def classifier_config(cfg: dict | None) -> dict:
    """``cfg`` (a ``classifier`` profile section, possibly partial) over ``DEFAULTS``, checked."""
    merged = config_mod.section({"classifier": cfg or {}}, "classifier", DEFAULTS)
    unknown = sorted(set(merged["augment"]) - set(DEFAULTS["augment"]))
    if unknown:
        raise config_mod.ConfigError(f"unknown key(s) in 'classifier.augment': {unknown}; known: {sorted(DEFAULTS['augment'])}")
    if merged["arch"] not in ARCHS:
        raise config_mod.ConfigError(f"classifier.arch={merged['arch']!r}: choose one of {list(ARCHS)}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(merged[key], int) or merged[key] < 1:
            raise config_mod.ConfigError(f"classifier.{key}={merged[key]!r}: must be an integer >= 1")
    if merged["patience"] is not None and (not isinstance(merged["patience"], int) or merged["patience"] < 1):
        raise config_mod.ConfigError(f"classifier.patience={merged['patience']!r}: must be None or an integer >= 1")
    if merged["lr_schedule"] not in ("constant", "cosine"):
        raise config_mod.ConfigError(f"classifier.lr_schedule={merged['lr_schedule']!r}: choose 'constant' or 'cosine'")
    if not merged["lr"] > 0:
        raise config_mod.ConfigError(f"classifier.lr={merged['lr']!r}: must be > 0")
    return merged


# ----------------------------------------------------------------------------- the model
@dataclass
class Classifier:
    """A trained classifier: network, its hyperparameters and how training went.

    hparams: ``arch``, ``width``, ``depth``, ``image_shape`` (H, W), ``labels``, ``eval_batch_size``.
    history: one dict per epoch: ``epoch``, ``train_loss``, ``val_loss`` (mean BCE per label).
    best_epoch: the epoch (0-based) whose weights these are — the lowest ``val_loss``.
    """

    net: nn.Module
    hparams: dict
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    info: dict = field(default_factory=dict)  # seed, training config, set sizes (recorded, not used)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.hparams["image_shape"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> "Classifier":
        self.net.to(device)
        return self

    # -- predictions ---------------------------------------------------------------------
    def _batches(self, images, batch_size: int):
        """Yield float (b, 1, H, W) batches in [-1, 1] after checking ``images`` fits the model."""
        h, w = self.image_shape
        if isinstance(images, ImageSet):
            if len(images) == 0:
                raise ValueError("predict_proba: the ImageSet is empty")
            if images.images.shape[1:] != (h, w):
                raise ValueError(f"predict_proba: images are {images.images.shape[1:]}, the classifier was trained on {(h, w)}")
            for start in range(0, len(images), batch_size):
                yield images.tensor(np.arange(start, min(start + batch_size, len(images))))
            return
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"predict_proba: expected a torch.Tensor (n, 1, H, W) in [-1, 1] or an ImageSet, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"predict_proba: images must be (n, 1, {h}, {w}) grayscale, got shape {tuple(images.shape)}")
        if tuple(images.shape[2:]) != (h, w):
            raise ValueError(f"predict_proba: images are {tuple(images.shape[2:])}, the classifier was trained on {(h, w)}")
        if len(images) == 0:
            raise ValueError("predict_proba: no images (n = 0)")
        if not images.is_floating_point():
            raise ValueError(f"predict_proba: images must be float in [-1, 1] (ImageSet.tensor), got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.5 or hi > 1.5:
            raise ValueError(f"predict_proba: images must lie in [-1, 1] (ImageSet.tensor); got values in [{lo:.3g}, {hi:.3g}]")
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]

    @torch.inference_mode()
    def predict_logits(self, images: torch.Tensor | ImageSet, batch_size: int | None = None) -> np.ndarray:
        """(N, 8) float32 logits, in ``LABELS`` order. See ``predict_proba``."""
        batch_size = int(batch_size or self.hparams["eval_batch_size"])
        self.net.eval()
        device = self.device
        out = [self.net(x.to(device, torch.float32)).float().cpu() for x in self._batches(images, batch_size)]
        return torch.cat(out).numpy()

    def predict_proba(self, images: torch.Tensor | ImageSet, batch_size: int | None = None) -> np.ndarray:
        """(N, 8) float32 sigmoid outputs, in ``LABELS`` order.

        images: a float tensor (N, 1, H, W) in [-1, 1] (``ImageSet.tensor()``) or an ImageSet
        (converted batch by batch, so memory-mapped sets stay on disk), with the (H, W) the
        classifier was trained on. batch_size: default ``hparams["eval_batch_size"]``.
        """
        logits = self.predict_logits(images, batch_size)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()

    # -- files ---------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """``classifier.safetensors`` (weights) + ``classifier.json`` (everything else)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(directory / _WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        meta = {"format": _FORMAT, "version": 1, "hparams": self.hparams, "history": self.history,
                "best_epoch": self.best_epoch, "info": self.info}
        atomic_write_json(directory / _META_FILE, meta)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> "Classifier":
        """Inverse of ``save`` (safetensors + JSON; nothing is unpickled). Device: default_device()."""
        directory = Path(directory)
        meta_path, weights_path = directory / _META_FILE, directory / _WEIGHTS_FILE
        for path in (meta_path, weights_path):
            if not path.exists():
                raise FileNotFoundError(f"{path}: missing; not a saved classifier directory")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {_FORMAT!r}")
        net = build_net(meta["hparams"])  # no ImageNet file needed: every weight is in the file
        net.load_state_dict(load_file(str(weights_path)), strict=True)
        clf = cls(net, meta["hparams"], meta["history"], meta["best_epoch"], meta.get("info", {}))
        return clf.to(device or default_device())


# ----------------------------------------------------------------------------- training
def _weights_path(weights) -> Path | None:
    """``classifier.weights``; a relative path is taken from the project root."""
    if weights is None:
        return None
    path = Path(weights).expanduser()
    return path if path.is_absolute() else config_mod.project_root() / path


def _check_training_set(imageset, name: str) -> None:
    if not isinstance(imageset, ImageSet):
        raise TypeError(f"fit_classifier: {name} must be an ImageSet, got {type(imageset).__name__}")
    if len(imageset) == 0:
        raise ValueError(f"fit_classifier: {name} is empty")
    labels = np.asarray(imageset.labels)
    if labels.shape != (len(imageset), N_LABELS):
        raise ValueError(f"fit_classifier: {name}.labels must be ({len(imageset)}, {N_LABELS}), got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"fit_classifier: {name}.labels must be 0/1, got values {np.unique(labels)[:10]}")


def augment(x: torch.Tensor, gen: torch.Generator, aug: dict) -> torch.Tensor:
    """Random affine (shift, zoom, rotation) + contrast/brightness jitter + optional flip.

    x: (b, 1, H, W) in [-1, 1]. Every random number comes from the CPU generator ``gen``, so
    the augmentation is the same on every device. Borders are extended (``padding_mode="border"``).
    """
    b = len(x)
    u = lambda: torch.rand(b, generator=gen).mul_(2).sub_(1)  # uniform in [-1, 1]
    angle = u() * math.radians(aug["rotate"])
    scale = 1.0 + u() * aug["scale"]
    tx, ty = u() * 2 * aug["translate"], u() * 2 * aug["translate"]  # grid units: side = 2
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if aug["hflip"] else torch.ones(b)
    contrast = 1.0 + u() * aug["contrast"]
    brightness = u() * aug["brightness"]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return x * contrast.to(x).view(b, 1, 1, 1) + brightness.to(x).view(b, 1, 1, 1)


def _learning_rate(cfg: dict, step: int, total_steps: int) -> float:
    """``lr`` (constant) or ``lr · ½(1 + cos(π · step / total_steps))`` (cosine)."""
    if cfg["lr_schedule"] == "constant":
        return cfg["lr"]
    return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def _epoch_order(seed: int, epoch: int, n: int, batch_size: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch (a function of seed and epoch only → resumable).

    A trailing batch of one image is dropped (BatchNorm needs two); it differs every epoch.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1] or [order]


@torch.inference_mode()
def mean_bce(net: nn.Module, imageset: ImageSet, batch_size: int, device) -> float:
    """Mean binary cross-entropy per label of ``net`` (eval mode) on ``imageset`` — the val loss."""
    net.eval()
    total = 0.0
    for start in range(0, len(imageset), batch_size):
        idx = np.arange(start, min(start + batch_size, len(imageset)))
        logits = net(imageset.tensor(idx).to(device))
        target = torch.from_numpy(np.asarray(imageset.labels[idx], dtype=np.float32)).to(device)
        total += float(F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum"))
    return total / (len(imageset) * N_LABELS)


def _fingerprint(cfg: dict, seed: int, train_set: ImageSet, val_set: ImageSet) -> str:
    """Identifies a training run, so a checkpoint is only resumed by the run that wrote it."""
    h = hashlib.sha256(json.dumps(to_jsonable({"cfg": cfg, "seed": seed}), sort_keys=True).encode())
    for s in (train_set, val_set):
        h.update(np.ascontiguousarray(s.labels).tobytes())
        h.update(np.ascontiguousarray(s.images[:: max(1, len(s) // 64)]).tobytes())
        h.update(str(s.images.shape).encode())
    return h.hexdigest()[:16]


def _save_checkpoint(directory: Path, net, best_state, opt, meta: dict) -> None:
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors |= {f"best.{k}": v.detach().cpu().contiguous() for k, v in best_state.items()}
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    with atomic_path(directory / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(directory / "checkpoint.json", meta)


def _load_checkpoint(directory: Path, net, opt, device) -> tuple[dict, dict]:
    tensors = load_file(str(directory / "checkpoint.safetensors"))
    meta = json.loads((directory / "checkpoint.json").read_text())
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
    best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    opt_state = opt.state_dict()
    opt_state["state"] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            opt_state["state"].setdefault(int(i), {})[name] = value if name == "step" else value.to(device)
    opt.load_state_dict(opt_state)
    return best_state, meta


def fit_classifier(
    train_set: ImageSet,
    val_set: ImageSet,
    cfg: dict | None,
    seed: int,
    checkpoint_dir: str | os.PathLike | None = None,
    callback: Callable[[dict, nn.Module], None] | None = None,
    progress: bool = True,
) -> Classifier:
    """Train the reference classifier on any labelled ImageSet (real or synthetic).

    train_set: images (N, H, W) with labels (N, 8) in ``LABELS`` order (a synthetic release
        carries the labels of each sample's source image).
    val_set: the *real* validation split, same (H, W); its mean BCE after each epoch picks
        the epoch that is returned (the paper's model selection).
    cfg: the ``classifier`` profile section (partial dicts are merged over ``DEFAULTS``).
    seed: every random choice (initialisation, shuffling, augmentation) derives from it; on
        CPU the result is bit-identical for the same inputs and thread count.
    checkpoint_dir: if given, the state after every epoch is saved there (safetensors +
        JSON) and an interrupted run with the same inputs resumes from it.
    callback: called after every epoch as ``callback(record, net)`` with the epoch's
        history record (``epoch``, ``train_loss``, ``val_loss``, ``best``) — for monitoring.
    progress: show a tqdm bar over training steps.

    Returns a ``Classifier`` holding the weights of the epoch with the lowest val loss,
    on ``default_device()``.
    """
    cfg = classifier_config(cfg)
    _check_training_set(train_set, "train_set")
    _check_training_set(val_set, "val_set")
    shape = tuple(train_set.images.shape[1:])
    if tuple(val_set.images.shape[1:]) != shape:
        raise ValueError(f"fit_classifier: val_set images are {tuple(val_set.images.shape[1:])}, train_set images are {shape}")
    seed = int(seed)
    device = default_device()
    hparams = {"arch": cfg["arch"], "width": cfg["width"], "depth": cfg["depth"], "image_shape": list(shape),
               "labels": list(LABELS), "eval_batch_size": cfg["eval_batch_size"]}
    if cfg["arch"] == "cnn" and min(shape) < 2 ** cfg["depth"]:
        raise ValueError(f"fit_classifier: classifier.depth={cfg['depth']} halves {shape} images below 1 pixel")

    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, global RNG untouched
        torch.manual_seed(seed)
        net = build_net(hparams, _weights_path(cfg["weights"])).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    history: list[dict] = []
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best_epoch, start_epoch = -1, 0
    fingerprint = _fingerprint(cfg, seed, train_set, val_set)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and (ckpt / "checkpoint.json").exists():
        meta = json.loads((ckpt / "checkpoint.json").read_text())
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt / 'checkpoint.json'}: written by a different training run "
                             "(other config, seed or data); delete it to start over")
        best_state, meta = _load_checkpoint(ckpt, net, opt, device)
        history, best_epoch, start_epoch = meta["history"], meta["best_epoch"], meta["epoch"] + 1
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)

    labels = torch.from_numpy(np.asarray(train_set.labels, dtype=np.float32))
    steps_per_epoch = len(_epoch_order(seed, 0, len(train_set), cfg["batch_size"]))
    bar = tqdm(total=cfg["epochs"] * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=f"classifier ({cfg['arch']})", disable=not progress, leave=False)
    for epoch in range(start_epoch, cfg["epochs"]):
        if cfg["patience"] is not None and best_epoch >= 0 and epoch - best_epoch > cfg["patience"]:
            break  # early stopping: `patience` epochs without a lower val loss
        net.train()
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # augmentation of this epoch
        total, count = 0.0, 0
        for step, idx in enumerate(_epoch_order(seed, epoch, len(train_set), cfg["batch_size"])):
            for group in opt.param_groups:  # a function of the step only, so resuming needs no state
                group["lr"] = _learning_rate(cfg, epoch * steps_per_epoch + step, cfg["epochs"] * steps_per_epoch)
            idx = np.sort(idx)  # sorted reads from memory-mapped images; the batch is a set
            x = augment(train_set.tensor(idx), gen, cfg["augment"]).to(device)
            loss = F.binary_cross_entropy_with_logits(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
            bar.update(1)
        val_loss = mean_bce(net, val_set, cfg["eval_batch_size"], device)
        improved = best_epoch < 0 or val_loss < history[best_epoch]["val_loss"]
        if improved:
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        record = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss, "best": improved}
        history.append(record)
        bar.set_postfix(epoch=epoch, train=f"{record['train_loss']:.3f}", val=f"{val_loss:.3f}", best=best_epoch)
        if ckpt is not None:
            _save_checkpoint(ckpt, net, best_state, opt, {"fingerprint": fingerprint, "epoch": epoch,
                                                          "history": history, "best_epoch": best_epoch})
        if callback is not None:
            callback(dict(record), net)
    bar.close()

    net.load_state_dict(best_state)
    net.eval()
    info = {"seed": seed, "config": copy.deepcopy(cfg), "n_train": len(train_set), "n_val": len(val_set),
            "n_parameters": n_parameters(net), "device": str(device)}
    return Classifier(net, hparams, history, best_epoch, info)


# ----------------------------------------------------------------------------- label consistency
def _as_probs(p, name: str) -> np.ndarray:
    if isinstance(p, torch.Tensor):
        p = p.detach().float().cpu().numpy()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] != N_LABELS:
        raise ValueError(f"{name} must have {N_LABELS} class probabilities in its last axis, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"{name} must be probabilities in [0, 1] (sigmoid outputs, not logits)")
    return p


def label_consistency(p_source, p_candidate, eps: float = 1e-7) -> np.ndarray:
    """The filter's label-consistency score: mean over the 8 classes of the BCE between the
    classifier's predictions on the source (as target) and on the candidate (as prediction):

        BCE(s, c) = -(1/8) Σ_k [ s_k log c_k + (1 - s_k) log(1 - c_k) ]

    Lower = more consistent. It is not 0 for identical predictions: BCE(p, p) is the mean
    binary entropy of p (0 only for confident 0/1 predictions). Paper reference values:
    ``PAPER_CONSISTENCY``. Arrays (…, 8) broadcast against each other (numpy rules), e.g.
    (N, 8) with (N, 8) → (N,), or (8,) with (M, 8) → (M,). ``c`` is clipped to
    [eps, 1 - eps] (default 1e-7) so a confident wrong prediction costs ~16, not infinity.
    """
    s, c = _as_probs(p_source, "p_source"), _as_probs(p_candidate, "p_candidate")
    c = np.clip(c, eps, 1 - eps)
    return -(s * np.log(c) + (1 - s) * np.log1p(-c)).mean(axis=-1)


def consistency_matrix(p_sources, p_candidates, eps: float = 1e-7) -> np.ndarray:
    """(N, M) ``label_consistency`` of every source (N, 8) with every candidate (M, 8),
    as two matrix products (no (N, M, 8) intermediate)."""
    s, c = _as_probs(p_sources, "p_sources"), _as_probs(p_candidates, "p_candidates")
    if s.ndim != 2 or c.ndim != 2:
        raise ValueError(f"consistency_matrix needs (N, 8) and (M, 8), got {s.shape} and {c.shape}")
    c = np.clip(c, eps, 1 - eps)
    return -(s @ np.log(c).T + (1 - s) @ np.log1p(-c).T) / N_LABELS


def pair_consistency(probs, patient_ids, n_pairs: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Label consistency of image pairs of the same patient and of different patients.

    probs: (N, 8) classifier outputs; patient_ids: (N,). Same-patient pairs: every ordered
    pair (i, j), i != j, of images of one patient (a random ``n_pairs`` of them if there are
    more). Different-patient pairs: as many random ordered pairs of images of two different
    patients (``n_pairs`` if given). Returns one row per pair: ``source``, ``candidate``
    (row indices), ``same_patient``, ``bce``. The paper's reference: same 0.166, different 0.213.
    """
    p = _as_probs(probs, "probs")
    pids = np.asarray(patient_ids)
    if p.ndim != 2 or pids.shape != (len(p),):
        raise ValueError(f"pair_consistency: probs (N, 8) and patient_ids (N,) needed, got {p.shape} and {pids.shape}")
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(pids, return_inverse=True)
    i, j = np.nonzero(inverse[:, None] == inverse[None, :])
    same = np.stack([i, j], 1)[i != j]
    if n_pairs is not None and len(same) > n_pairs:
        same = same[np.sort(rng.choice(len(same), n_pairs, replace=False))]
    n_diff = n_pairs if n_pairs is not None else max(len(same), 1)
    if len(np.unique(inverse)) < 2:
        raise ValueError("pair_consistency: needs images of at least two patients")
    diff = np.empty((0, 2), dtype=np.int64)
    while len(diff) < n_diff:
        cand = rng.integers(0, len(p), size=(2 * n_diff, 2))
        diff = np.concatenate([diff, cand[inverse[cand[:, 0]] != inverse[cand[:, 1]]]])
    pairs = np.concatenate([same, diff[:n_diff]])
    return pd.DataFrame({
        "source": pairs[:, 0], "candidate": pairs[:, 1],
        "same_patient": np.r_[np.ones(len(same), bool), np.zeros(n_diff, bool)],
        "bce": label_consistency(p[pairs[:, 0]], p[pairs[:, 1]]),
    })


def summarize_pair_consistency(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and count of ``pair_consistency`` rows per kind, beside the paper's value."""
    kind = np.where(pairs["same_patient"], "same patient", "different patients")
    out = pairs.groupby(kind)["bce"].agg(["mean", "median", "count"]).rename(columns={"count": "n_pairs"})
    out = out.reindex(["same patient", "different patients"])
    out["paper"] = [PAPER_CONSISTENCY[k] for k in out.index]
    out.index.name = "pair"
    return out


# ----------------------------------------------------------------------------- evaluation
def evaluate_classifier(clf: Classifier, test_set: ImageSet, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95, probs: np.ndarray | None = None) -> pd.DataFrame:
    """Per-class and mean AUROC on ``test_set`` with bootstrap CIs (``stats.auroc_table``).

    probs: the classifier's (N, 8) predictions on ``test_set`` if already computed (e.g. the
    ``classifier`` stage's ``test_probs.npy``); otherwise they are predicted here.
    Returns the DataFrame indexed by ``LABELS`` + "mean" (columns auroc, lo, hi, n_pos, ...).
    """
    from .stats import auroc_table

    if len(test_set) == 0:
        raise ValueError("evaluate_classifier: test_set is empty")
    if probs is None:
        probs = clf.predict_proba(test_set)
    probs = np.asarray(probs)
    if probs.shape != (len(test_set), N_LABELS):
        raise ValueError(f"evaluate_classifier: probs must be ({len(test_set)}, {N_LABELS}), got {probs.shape}")
    return auroc_table(test_set.labels, probs, list(LABELS), n_boot=n_boot, seed=seed, level=level)


def roc_curves(y_true, probs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{label: (false-positive rate, true-positive rate)} per class with both label values."""
    from sklearn.metrics import roc_curve

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    curves = {}
    for k, name in enumerate(LABELS):
        if 0 < y_true[:, k].sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true[:, k], probs[:, k])
            curves[name] = (fpr, tpr)
    return curves
