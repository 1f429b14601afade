"""Training precision and memory layout of the project's CNNs: speed against the fp32 NCHW reference, and quality.

    .venv/bin/python benchmarks/precision.py            # ~6 min on 2 cores
    .venv/bin/python benchmarks/precision.py --quick    # ~1 min
    .venv/bin/python benchmarks/precision.py --threads 1   # one thread, as a job of jobs.run_jobs runs

Three arms per training loop, each end to end through the library's own function, in one process
(the reference is run first and every ratio is against it):

* ``fp32 NCHW``: contiguous weights (``device.channels_last`` replaced by the identity in the
  network builders for this arm), precision "fp32";
* ``fp32 NHWC``: channels-last weights (``device.channels_last``), precision "fp32";
* ``bf16 NHWC``: channels-last and bf16 autocast of the training step (precision "bf16"),
  what ``precision: auto`` picks on a CPU with AVX-512 BF16 or AMX.

Loops: the reference classifier (``fit_classifier``, the profile's ``classifier`` recipe, fewer
epochs), scored by the mean test AUROC on fresh PhantomCXR patients; the siamese verifier
(``train_verifier``, the profile's ``reid`` recipe, fewer epochs), scored by its best val pair
AUROC. Quality is one seed per arm: it shows that bf16 does not break training, not a
difference smaller than a seed's spread. The denoiser in fp32 and bf16 (NCHW: channels-last
does not speed it up): ``train_denoiser`` on the profile's preset (300 steps on random
images; quality: the final loss), then ``sample`` with the trained EMA network (512 samples
at the profile's ``generate`` solver, steps and batch size; quality: the mean pixel difference
to the fp32 images of the same seeds). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch
import yaml

from trichotomy_lib import seeds
from trichotomy_lib.config import profile_path
from trichotomy_lib.data.phantom import generate_phantom
from trichotomy_lib.device import default_device, native_bf16
from trichotomy_lib.diffusion.network import Denoiser
from trichotomy_lib.diffusion.presets import network_preset, train_preset
from trichotomy_lib.diffusion.sampler import sample
from trichotomy_lib.diffusion.train import train_denoiser
from trichotomy_lib.evaluation.classifier import classifier_config, fit_classifier
from trichotomy_lib.evaluation.classifier import nets as classifier_nets
from trichotomy_lib.evaluation.stats import mean_auroc
from trichotomy_lib.privacy import reid_model, reid_train
from trichotomy_lib.results import to_markdown


ARMS = (("fp32 NCHW", "fp32", False), ("fp32 NHWC", "fp32", True), ("bf16 NHWC", "bf16", True))


@contextmanager
def layout(nhwc: bool):
    """The library with (``nhwc``) or without channels-last weights in its training loops."""
    modules = (classifier_nets, reid_model)
    saved = [m.channels_last for m in modules]
    if not nhwc:
        for m in modules:
            m.channels_last = lambda module: module
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m.channels_last = f


def classifier_arms(profile: dict, n_train: int, n_test: int, epochs: int, seed: int) -> list[dict]:
    data_seed = seeds.derive(seed, "benchmark", "precision", "data") % 2**32
    n_val = max(2, n_train // 4)
    train, val, test = (generate_phantom(n, image_size=32, seed=data_seed, first_patient=first)
                        for n, first in ((n_train, 0), (n_val, n_train), (n_test, n_train + n_val)))
    rows = []
    for name, precision, nhwc in ARMS:
        cfg = classifier_config({**(profile.get("classifier") or {}), "epochs": epochs, "precision": precision})
        with layout(nhwc):
            fit_classifier(train.subset(np.arange(64)), val.subset(np.arange(32)), {**cfg, "epochs": 1}, 1,
                           progress=False)  # warm-up: kernels and allocator out of the clock
            t0 = time.perf_counter()
            clf = fit_classifier(train, val, cfg, seed=seeds.derive(seed, "benchmark", "precision", "fit"),
                                 progress=False)
            seconds = time.perf_counter() - t0
            auroc = mean_auroc(np.asarray(test.labels), clf.predict_proba(test))
        rows.append({"loop": "classifier (fit_classifier)", "arm": name, "seconds": seconds,
                     "items/s": len(clf.history) * len(train) / seconds, "quality": 100 * auroc,
                     "quality is": "test mean AUROC (points)"})
        print(f"classifier {name}: {seconds:.1f} s, mean AUROC {100 * auroc:.1f}", flush=True)
    return rows


def verifier_arms(profile: dict, n_train: int, epochs: int, seed: int) -> list[dict]:
    data_seed = seeds.derive(seed, "benchmark", "precision", "reid") % 2**32
    n_val = max(10, n_train // 4)
    train = generate_phantom(n_train, image_size=32, seed=data_seed)
    val = generate_phantom(n_val, image_size=32, seed=data_seed, first_patient=n_train)
    reid = {k: v for k, v in (profile.get("reid") or {}).items() if k in reid_train.TRAIN_KEYS}
    reid = {k: v for k, v in reid.items() if k not in ("extra_patients", "auditor_patients")}
    rows = []
    for name, precision, nhwc in ARMS:
        params = {**reid, "epochs": epochs, "patience": None, "precision": precision}
        with layout(nhwc):
            t0 = time.perf_counter()
            _, history = reid_train.train_verifier(train, val, params, seeds.derive(seed, "benchmark", "precision", "v"),
                                                   progress=False)
            seconds = time.perf_counter() - t0
        rows.append({"loop": "verifier (train_verifier)", "arm": name, "seconds": seconds,
                     "items/s": epochs * history["n_pairs"] / seconds, "quality": 100 * history["best_val_auroc"],
                     "quality is": "val pair AUROC (points)"})
        print(f"verifier {name}: {seconds:.1f} s, val pair AUROC {100 * history['best_val_auroc']:.2f}", flush=True)
    return rows


def denoiser_arms(profile: dict, steps: int, n_samples: int) -> list[dict]:
    """The denoiser end to end through the library, fp32 against bf16: ``train_denoiser`` (the
    profile's preset, ``steps`` steps on random images) and ``sample`` (the trained network, the
    profile's ``generate`` solver, steps and batch size, guidance 1.4 as the filter's first
    attempt). Quality of sampling: the mean |bf16 − fp32| pixel of the same seeds."""
    preset = (profile.get("diffusion") or {}).get("preset", "default")
    g = {"solver": "dpm", "steps": 10, "batch_size": 256, **(profile.get("generate") or {})}
    gen = torch.Generator().manual_seed(0)
    n = 970
    x = torch.rand(n, 1, 32, 32, generator=gen) * 2 - 1
    labels, emb = (torch.rand(n, 8, generator=gen) < 0.3).float(), torch.randn(n, 128, generator=gen)
    hp = {**train_preset(preset), "steps": steps, "checkpoint_every": steps, "guide_step": None}
    rows, images = [], {}
    for name, mp in (("fp32 NCHW", "no"), ("bf16 NCHW", "bf16")):
        torch.manual_seed(0)
        net = Denoiser(in_channels=1, sample_size=32, label_dim=8, embed_dim=128, **network_preset(preset))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = train_denoiser(net, x, tmp, {**hp, "mixed_precision": mp}, labels, emb, seed=0, progress=False)
            seconds = time.perf_counter() - t0
        loss = float(np.mean(result["log"]["loss"][-max(1, steps // 5):]))
        rows.append({"loop": "denoiser training", "arm": name, "seconds": seconds, "items/s": steps * hp["batch_size"] / seconds,
                     "quality": loss, "quality is": "final training loss"})
        print(f"denoiser training {name}: {seconds:.1f} s, loss {loss:.4f}", flush=True)
        net = result["ema"]
    cond = {"labels": labels[:n_samples], "embedding": emb[:n_samples]}
    for name, precision in (("fp32 NCHW", "fp32"), ("bf16 NCHW", "bf16")):
        t0 = time.perf_counter()
        images[name] = sample(net, cond, range(n_samples), steps=g["steps"], guidance=1.4, solver=g["solver"],
                              batch_size=g["batch_size"], precision=precision)
        seconds = time.perf_counter() - t0
        diff = float((images[name] - images["fp32 NCHW"]).abs().mean())
        rows.append({"loop": "denoiser sampling", "arm": name, "seconds": seconds, "items/s": n_samples / seconds,
                     "quality": diff, "quality is": "mean abs. pixel difference to fp32"})
        print(f"denoiser sampling {name}: {seconds:.1f} s, mean |diff| {diff:.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller populations, 2 epochs each")
    ap.add_argument("--profile", default="default", help="profile whose 'classifier' and 'reid' recipes are run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = yaml.safe_load(profile_path(args.profile).read_text())
    device = default_device()
    print(f"device {device}, native bf16: {native_bf16(device)}, torch threads {torch.get_num_threads()}", flush=True)
    if args.quick:
        rows = classifier_arms(profile, 150, 200, 2, args.seed) + verifier_arms(profile, 80, 2, args.seed)
    else:
        rows = classifier_arms(profile, 500, 600, 5, args.seed) + verifier_arms(profile, 250, 4, args.seed)
    rows += denoiser_arms(profile, 30 if args.quick else 300, 128 if args.quick else 512)
    table = pd.DataFrame(rows)
    ref = table.groupby("loop")["items/s"].transform("first")  # each loop's first arm: fp32 NCHW
    table["speed vs fp32 NCHW"] = table["items/s"] / ref
    print()
    print(to_markdown(table.set_index(["loop", "arm"]), ".2f"))


if __name__ == "__main__":
    main()
