"""Stage ``encoder``: the pseudo-conditioning feature extractor and its cached embeddings.

DiADM (DESIGN step 4) conditions the diffusion model on a frozen embedding of each real
training image. This stage builds that encoder — by default a SimCLR network trained on the
training split (``encoders.ssl``), or a backbone from a local weights file
(``encoder.backbone`` + ``encoder.weights``, ``encoders.backbone``) — and embeds every split.

Artifacts: ``encoder.json`` (+ ``encoder.safetensors``), ``train_log.json`` (SSL losses),
``embeddings_<split>.npy`` (float32, (N, dim), rows of norm sqrt(dim)), in split order.
"""

from __future__ import annotations

import json
import time

import numpy as np

from ..config import register_section
from ..encoders.base import Encoder
from ..encoders.config import encoder_config, ssl_hyperparameters
from ..encoders.ssl import train_ssl
from ..encoders.store import Checkpoint, load_encoder_dir, save_encoder
from ..io import atomic_path, atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from .data import SPLITS, load_splits

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
        train = splits["train"]
        start = time.perf_counter()
        checkpoint = Checkpoint(ctx.out / "checkpoint.safetensors")
        net, losses = train_ssl(train.tensor(), ssl_hyperparameters(enc), seed, checkpoint=checkpoint)
        info = {"kind": "ssl", "method": "SimCLR (NT-Xent)", "hyperparameters": ssl_hyperparameters(enc),
                "seed": seed, "n_train_images": len(train), "train_seconds": round(time.perf_counter() - start, 2)}
        encoder = Encoder(net, enc["dim"], train.image_size, info)
        atomic_write_json(ctx.out / "train_log.json", {"loss": losses})
        save_encoder(encoder, ctx.out)
        checkpoint.remove()
    for name in SPLITS:
        if name in splits:
            emb = encoder.embed(splits[name].tensor(), batch_size=enc["embed_batch_size"]).numpy().astype(np.float32)
            with atomic_path(ctx.out / f"embeddings_{name}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, emb, allow_pickle=False)


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
