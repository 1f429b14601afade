"""Training the reference classifier: the CheXNet recipe (Rajpurkar et al. 2017, as the paper trains it).

Sigmoid outputs, binary cross-entropy, Adam, and the epoch with the lowest loss on the *real*
validation split is the one kept. ``fit_classifier`` is a pure function of its inputs and
``seed`` (bit-identical on CPU), so the same call serves real and synthetic training sets.

Every random choice derives from ``seed`` through named streams (``seeds``): the
initialisation, the shuffled batches of epoch e (``("classifier", "epoch", e)``) and its
augmentation (``("classifier", "augment", e)``). The learning rate is a function of the step.
So an epoch depends only on the state at its start, and a run resumed from the training-state
checkpoint written after each epoch ends exactly like an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ... import config as config_mod
from ... import seeds
from ...checkpoint import load_training_state, save_training_state
from ...data.imageset import LABELS, N_LABELS, ImageSet
from ...device import autocast, default_device, resolve_precision
from ...io import to_jsonable
from .config import classifier_config
from .metrics import mean_bce
from .model import Classifier
from .nets import build_net, n_parameters

# The resume state inside ``fit_classifier(checkpoint_dir=...)``: net, best weights, Adam, progress.
TRAINING_STATE_FILE = "training_state.safetensors"


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
    if not labels.any():
        raise ValueError(f"fit_classifier: every label of {name} is 0 ({len(imageset)} images, none with a finding "
                         "or 'No Finding'); a release must carry its sources' labels")


def augment(x: torch.Tensor, gen: torch.Generator, aug: dict) -> torch.Tensor:
    """Random affine (shift, zoom, rotation) + contrast/brightness jitter + optional flip + pixel noise.

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
    x = x * contrast.to(x).view(b, 1, 1, 1) + brightness.to(x).view(b, 1, 1, 1)
    if aug.get("noise", 0.0):
        x = x + aug["noise"] * torch.randn(x.shape, generator=gen).to(x)
    return x


def learning_rate(cfg: dict, step: int, total_steps: int) -> float:
    """``lr`` (constant) or ``lr · ½(1 + cos(π · step / total_steps))`` (cosine)."""
    if cfg["lr_schedule"] == "constant":
        return cfg["lr"]
    return cfg["lr"] * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def epoch_batches(seed: int, epoch: int, n: int, batch_size: int) -> list[np.ndarray]:
    """The shuffled batches of one epoch (a function of seed and epoch only → resumable).

    A trailing batch of one image is dropped (BatchNorm needs two); it differs every epoch.
    """
    order = seeds.rng(seed, "classifier", "epoch", epoch).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1] or [order]


def _run_fingerprint(cfg: dict, seed: int, train_set: ImageSet, val_set: ImageSet, targets=None) -> str:
    """Identifies a training run, so a checkpoint is only resumed by the run that wrote it."""
    h = hashlib.sha256(json.dumps(to_jsonable({"cfg": cfg, "seed": seed}), sort_keys=True).encode())
    for s in (train_set, val_set):
        h.update(np.ascontiguousarray(s.labels).tobytes())
        h.update(np.ascontiguousarray(s.images[:: max(1, len(s) // 64)]).tobytes())
        h.update(str(s.images.shape).encode())
    if targets is not None:
        h.update(b"targets" + np.ascontiguousarray(targets).tobytes())
    return h.hexdigest()[:16]


def _check_targets(targets, n: int) -> np.ndarray:
    """Soft BCE targets: (n, 8) finite, in [0, 1]."""
    t = np.asarray(targets, dtype=np.float32)
    if t.shape != (n, N_LABELS):
        raise ValueError(f"fit_classifier: targets must be ({n}, {N_LABELS}), one row per training image, got {t.shape}")
    if not np.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise ValueError("fit_classifier: targets must be finite probabilities in [0, 1]")
    return t


def fit_classifier(
    train_set: ImageSet,
    val_set: ImageSet,
    cfg: dict | None,
    seed: int,
    checkpoint_dir: str | os.PathLike | None = None,
    callback: Callable[[dict, nn.Module], None] | None = None,
    progress: bool = True,
    targets: np.ndarray | None = None,
) -> Classifier:
    """Train the reference classifier on any labelled ImageSet (real or synthetic).

    train_set: images (N, H, W) with labels (N, 8) in ``LABELS`` order (a synthetic release
        carries the labels of each sample's source image).
    val_set: the *real* validation split, same (H, W); its mean BCE after each epoch picks
        the epoch that is returned (the paper's model selection).
    cfg: the ``classifier`` profile section (partial dicts are merged over ``CLASSIFIER_DEFAULTS``).
    seed: every random choice (initialisation, shuffling, augmentation) derives from it; on
        CPU the result is bit-identical for the same inputs and thread count.
    checkpoint_dir: if given, the training state after every epoch is saved there
        (``TRAINING_STATE_FILE``, see ``trichotomy_lib.checkpoint``) and an interrupted run
        with the same inputs resumes from it; a state written by another run is refused.
    callback: called after every epoch as ``callback(record, net)`` with the epoch's
        history record (``epoch``, ``train_loss``, ``val_loss``, ``best``) — for monitoring.
    progress: show a tqdm bar over training steps.
    targets: None (default) trains on ``train_set.labels``; an (N, 8) array of probabilities in
        [0, 1] replaces them as the BCE targets — a teacher's outputs, i.e. distillation (a
        diagnostic of ``benchmarks/utility_gap.py``, not the paper's recipe). The epoch is
        still chosen by the val split's own labels.

    Returns a ``Classifier`` holding the weights of the epoch with the lowest val loss,
    on ``default_device()``.
    """
    cfg = classifier_config(cfg)
    _check_training_set(train_set, "train_set")
    _check_training_set(val_set, "val_set")
    if targets is not None:
        targets = _check_targets(targets, len(train_set))
    shape = tuple(train_set.images.shape[1:])
    if tuple(val_set.images.shape[1:]) != shape:
        raise ValueError(f"fit_classifier: val_set images are {tuple(val_set.images.shape[1:])}, train_set images are {shape}")
    seed = int(seed)
    device = default_device()
    hparams = {"arch": cfg["arch"], "width": cfg["width"], "depth": cfg["depth"], "image_shape": list(shape),
               "labels": list(LABELS), "eval_batch_size": cfg["eval_batch_size"]}
    if cfg["arch"] == "cnn" and min(shape) < 2 ** cfg["depth"]:
        raise ValueError(f"fit_classifier: classifier.depth={cfg['depth']} halves {shape} images below 1 pixel")

    precision = resolve_precision(cfg["precision"], device, "classifier.precision")
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed, global RNG untouched
        torch.manual_seed(seed)
        net = build_net(hparams, _weights_path(cfg["weights"])).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    history: list[dict] = []
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best_epoch, start_epoch = -1, 0
    fingerprint = _run_fingerprint(cfg, seed, train_set, val_set, targets)
    state_file = Path(checkpoint_dir) / TRAINING_STATE_FILE if checkpoint_dir is not None else None
    if state_file is not None and state_file.exists():
        state = load_training_state(state_file)
        if state.meta.get("fingerprint") != fingerprint:
            raise ValueError(f"{state_file}: written by a different training run "
                             "(other config, seed or data); delete it to start over")
        state.load_module("net", net)
        state.load_optimizer("adam", opt)
        best_state = state.state_dict("best", device)
        history, best_epoch, start_epoch = state.meta["history"], state.meta["best_epoch"], state.meta["epoch"] + 1
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)

    labels = torch.from_numpy(np.asarray(train_set.labels if targets is None else targets, dtype=np.float32))
    steps_per_epoch = len(epoch_batches(seed, 0, len(train_set), cfg["batch_size"]))
    bar = tqdm(total=cfg["epochs"] * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=f"classifier ({cfg['arch']})", disable=not progress, leave=False)
    for epoch in range(start_epoch, cfg["epochs"]):
        if cfg["patience"] is not None and best_epoch >= 0 and epoch - best_epoch > cfg["patience"]:
            break  # early stopping: `patience` epochs without a lower val loss
        net.train()
        gen = seeds.torch_generator(seed, "classifier", "augment", epoch)  # augmentation of this epoch
        total, count = 0.0, 0
        for step, idx in enumerate(epoch_batches(seed, epoch, len(train_set), cfg["batch_size"])):
            for group in opt.param_groups:  # a function of the step only, so resuming needs no state
                group["lr"] = learning_rate(cfg, epoch * steps_per_epoch + step, cfg["epochs"] * steps_per_epoch)
            idx = np.sort(idx)  # sorted reads from memory-mapped images; the batch is a set
            x = augment(train_set.tensor(idx), gen, cfg["augment"]).to(device)
            with autocast(device, precision):
                logits = net(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
            bar.update(1)
        val_loss = mean_bce(net, val_set, cfg["eval_batch_size"], device, precision)
        improved = best_epoch < 0 or val_loss < history[best_epoch]["val_loss"]
        if improved:
            best_epoch = epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        record = {"epoch": epoch, "train_loss": total / count, "val_loss": val_loss, "best": improved}
        history.append(record)
        bar.set_postfix(epoch=epoch, train=f"{record['train_loss']:.3f}", val=f"{val_loss:.3f}", best=best_epoch)
        if state_file is not None:
            save_training_state(state_file, modules={"net": net, "best": best_state}, optimizers={"adam": opt},
                                meta={"fingerprint": fingerprint, "epoch": epoch, "history": history,
                                      "best_epoch": best_epoch})
        if callback is not None:
            callback(dict(record), net)
    bar.close()

    net.load_state_dict(best_state)
    net.eval()
    info = {"seed": seed, "config": copy.deepcopy(cfg), "n_train": len(train_set), "n_val": len(val_set),
            "n_parameters": n_parameters(net), "device": str(device), "precision": precision}
    return Classifier(net, hparams, history, best_epoch, info)

