"""Stages ``encoder`` and ``attacker_encoder``: the pseudo-conditioning feature extractor and
its cached embeddings, and the attacker's own copy of that recipe trained on public patients.

DiADM (DESIGN step 4) conditions the diffusion model on a frozen embedding of each real
training image. This stage builds that encoder — by default a SimCLR network trained on the
training split (``encoders.ssl``), or a backbone from a local weights file
(``encoder.backbone`` + ``encoder.weights``, ``encoders.backbone``) — and embeds every split.

Artifacts: ``encoder.json`` (+ ``encoder.safetensors``), ``train_log.json`` (SSL losses),
``embeddings_<split>.npy`` (float32, (N, dim), rows of norm sqrt(dim)), in split order.

An attacker does not hold the generator's encoder, which saw the training patients; what it can
hold is the same public recipe trained on public data. ``attacker_encoder`` is that encoder:
the ``encoder`` section's recipe without its findings head (SimCLR alone keeps more of what
singles a patient out), its own seed, trained on the auditor's population (fresh
patients in no split and no privacy population, the stand-in for a public dataset; for file
lists the documented auditor part of val + test). Its ball predicate is one of the attackers
(``privacy.attackers: public_encoder``). Artifacts: the encoder and ``patients.npy`` (who it
trained on, to check that the audited patients are not among them).
"""

from __future__ import annotations

import json
import time

import numpy as np

from .. import seeds
from ..config import register_section
from ..encoders.base import Encoder
from ..encoders.config import encoder_config, ssl_hyperparameters
from ..encoders.ssl import train_ssl
from ..encoders.store import Checkpoint, load_encoder_dir, save_encoder
from ..io import atomic_path, atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from .data import SPLITS, load_splits
from .populations import load_populations

register_section("encoder")(encoder_config)


@stage("encoder", keys=("seed", "encoder"), deps=("data",), version=2)
def encoder_stage(ctx: StageContext) -> None:
    """Build/train the encoder, then embed the train/val/test splits."""
    enc = ctx.config["encoder"]
    seed = int(ctx.config["seed"])
    splits = load_splits(ctx.pipeline)
    if "train" not in splits:
        raise ValueError(f"{ctx.inputs['data']}: the data stage wrote no 'train' split")
    if (ctx.out / "encoder.json").exists():  # an interrupted run already finished training
        encoder = load_encoder_dir(ctx.out)
    elif enc["backbone"] is not None:
        from ..encoders.backbone import torchvision_encoder  # torchvision: an optional extra

        encoder = torchvision_encoder(enc["backbone"], enc["weights"])
        save_encoder(encoder, ctx.out)
    else:
        encoder = _train_ssl_encoder(splits["train"], enc, seed, ctx.out)
    for name in SPLITS:
        if name in splits:
            emb = encoder.embed(splits[name].tensor(), batch_size=enc["embed_batch_size"]).numpy().astype(np.float32)
            with atomic_path(ctx.out / f"embeddings_{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, emb, allow_pickle=False)


def _train_ssl_encoder(images, enc: dict, seed: int, out) -> Encoder:
    """SimCLR on ``images`` (an ImageSet) with the ``encoder`` recipe; resumes from ``out``'s checkpoint."""
    start = time.perf_counter()
    checkpoint = Checkpoint(out / "checkpoint.safetensors")
    net, losses = train_ssl(images.tensor(), ssl_hyperparameters(enc), seed, checkpoint=checkpoint,
                            labels=images.labels)
    method = "SimCLR (NT-Xent)" + (" + findings head" if net.n_labels else "")
    info = {"kind": "ssl", "method": method, "hyperparameters": {**ssl_hyperparameters(enc), "n_labels": net.n_labels},
            "seed": seed, "n_train_images": len(images), "train_seconds": round(time.perf_counter() - start, 2)}
    encoder = Encoder(net, enc["dim"], images.image_size, info)
    atomic_write_json(out / "train_log.json", {"loss": losses})
    save_encoder(encoder, out)
    checkpoint.remove()
    return encoder


@stage("attacker_encoder", keys=("seed", "encoder"), deps=("control_population",), version=1)
def attacker_encoder_stage(ctx: StageContext) -> None:
    """The attacker's encoder: the ``encoder`` recipe, its own seed, on the auditor's public patients."""
    enc = ctx.config["encoder"]
    if enc["backbone"] is not None:  # a pre-trained public backbone: the attacker can hold it as it is
        from ..encoders.backbone import torchvision_encoder

        save_encoder(torchvision_encoder(enc["backbone"], enc["weights"]), ctx.out)
        patients = np.zeros(0, dtype=str)
    else:
        public = load_populations(ctx.pipeline)["auditor"]
        if not (ctx.out / "encoder.json").exists():  # an interrupted run already finished training
            # SimCLR alone: a findings head (encoder.label_weight) would teach the attacker's space to
            # keep findings instead of identity, a weaker attacker than the plain recipe
            _train_ssl_encoder(public, {**enc, "label_weight": 0.0},
                               seeds.derive(int(ctx.config["seed"]), "attacker", "encoder"), ctx.out)
        patients = np.unique(public.patient_ids).astype(str)
    with atomic_path(ctx.out / "patients.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, patients, allow_pickle=False)


def load_attacker_encoder(pipe: Pipeline, device=None) -> Encoder:
    """The attacker's own encoder (``attacker_encoder``; computed on first use)."""
    return load_encoder_dir(pipe.get("attacker_encoder"), device=device)


def attacker_encoder_patients(pipe: Pipeline) -> np.ndarray:
    """The patient ids the attacker's encoder was trained on."""
    return np.load(pipe.get("attacker_encoder") / "patients.npy", allow_pickle=False)


def load_encoder(pipe: Pipeline, device=None) -> Encoder:
    """The frozen encoder (computed on first use); ``.embed(images, batch_size)`` → (N, dim)."""
    return load_encoder_dir(pipe.get("encoder"), device=device)


def load_embeddings(pipe: Pipeline, split: str = "train") -> np.ndarray:
    """Cached embeddings of one split: float32 (N, dim), row i ↔ image i of ``load_splits``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = pipe.get("encoder") / f"embeddings_{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no embeddings for split {split!r} (the data stage has no such split)")
    return np.load(path, allow_pickle=False)


def load_train_log(pipe: Pipeline) -> dict:
    """``{"loss": [...]}`` of the SSL training (empty for a backbone encoder)."""
    path = pipe.get("encoder") / "train_log.json"
    return json.loads(path.read_text()) if path.exists() else {"loss": []}
