"""Reference classifier throughput: the training and prediction pipelines against the bare network.

    .venv/bin/python benchmarks/classifier.py            # 500 train / 1,000 test patients, 3 epochs (1-3 min, 2 cores)
    .venv/bin/python benchmarks/classifier.py --quick    # 100 / 300 patients, 1 epoch (~15 s)

Data: PhantomCXR at 32 px (``generate_phantom(n, 32, seed)``): train and val populations of
single-label images (``labels.sum(1) <= 1``), a disjoint test population with every scan.
Recipe: the ``classifier`` section of the profile (``--profile``, default ``default``; read with
yaml, merged by ``classifier_config``), with ``epochs`` replaced by ``--epochs``.

Measured (wall clock; training once, prediction as the median of ``--reps`` interleaved runs):
- train pipeline: ``fit_classifier`` end to end after a 2-batch warm-up call (batching,
  augmentation, Adam, cosine lr, per-epoch validation pass and best-weight copy);
  images/s = epochs × n_train / seconds;
- eval pipeline: ``Classifier.predict_proba`` on the test ImageSet (uint8 → float per batch);
- raw train: a copy of the same net, forward + BCE + backward + Adam on random tensors of the
  recipe's batch size, as many images as the pipeline saw (no data, no augmentation);
- raw eval: the same net's forward in inference mode, eval batch size, random tensors;
- FLOPs: ``FlopCounterMode`` on one batch-1 forward (convs + linear; BN, ReLU, pooling not
  counted); training ≈ 3 × forward. GFLOP/s = FLOPs/image × images/s.
The column pipeline / raw (images/s) is what the pipeline costs on top of the net (1 = nothing).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from trichotomy_lib import seeds
from trichotomy_lib.config import profile_path
from trichotomy_lib.data.imageset import N_LABELS
from trichotomy_lib.data.phantom import generate_phantom
from trichotomy_lib.evaluation.classifier import (
    classifier_config,
    fit_classifier,
    n_parameters,
)
from trichotomy_lib.results import to_markdown


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_train(net, n_images, batch, device, gen) -> float:
    """Seconds for forward + BCE + backward + Adam over ``n_images`` random images (after 2 warm-up steps)."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, 32, 32, generator=gen).mul_(2).sub_(1).to(device)
    y = (torch.rand(batch, N_LABELS, generator=gen) < 0.2).float().to(device)

    def step(b):
        loss = F.binary_cross_entropy_with_logits(net(x[:b]), y[:b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batch), step(batch)
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, n_images, batch):
        step(max(2, min(batch, n_images - start)))
    sync(device)
    return time.perf_counter() - t0


@torch.inference_mode()
def raw_eval(net, n_images, batch, device, gen) -> float:
    net.eval()
    x = torch.rand(batch, 1, 32, 32, generator=gen).mul_(2).sub_(1).to(device)
    net(x)
    sync(device)
    t0 = time.perf_counter()
    for start in range(0, n_images, batch):
        net(x[: min(batch, n_images - start)]).float().cpu()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 train / 300 test patients, 1 epoch")
    ap.add_argument("--profile", default="default", help="profile whose 'classifier' section is the recipe")
    ap.add_argument("--train-patients", type=int, help="default 500 (quick 100); val: a quarter as many more")
    ap.add_argument("--test-patients", type=int, help="default 1000 ≈ 2,800 images (quick 300)")
    ap.add_argument("--epochs", type=int, help="epochs of the timed training run (default 3; quick 1)")
    ap.add_argument("--reps", type=int, default=3, help="prediction timings: median of this many runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own; the library sets none)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_tr = args.train_patients or (100 if args.quick else 500)
    n_te = args.test_patients or (300 if args.quick else 1000)
    epochs = args.epochs or (1 if args.quick else 3)
    profile = yaml.safe_load(profile_path(args.profile).read_text())
    cfg = classifier_config({**(profile.get("classifier") or {}), "epochs": epochs})

    data_seed = seeds.derive(args.seed, "benchmark", "classifier", "data") % 2**32
    n_va = max(2, n_tr // 4)
    train, val, test = (generate_phantom(n, image_size=32, seed=data_seed, first_patient=first)
                        for n, first in ((n_tr, 0), (n_va, n_tr), (n_te, n_tr + n_va)))
    train, val = (s.subset(np.asarray(s.labels).sum(1) <= 1) for s in (train, val))  # single-label
    print(f"recipe ({args.profile}): arch {cfg['arch']}, width {cfg['width']}, depth {cfg['depth']}, batch "
          f"{cfg['batch_size']}, eval batch {cfg['eval_batch_size']}, {epochs} epoch(s); torch threads "
          f"{torch.get_num_threads()}; images: train {len(train)}, val {len(val)}, test {len(test)}", flush=True)

    # ---- pipelines --------------------------------------------------------------------------
    fit_seed = seeds.derive(args.seed, "benchmark", "classifier", "fit")
    warm = np.arange(min(len(train), 2 * cfg["batch_size"]))  # one-time costs (kernels, allocator) out of the clock
    fit_classifier(train.subset(warm), val.subset(warm[: len(val)]), {**cfg, "epochs": 1}, fit_seed, progress=False)
    t0 = time.perf_counter()
    clf = fit_classifier(train, val, cfg, seed=fit_seed, progress=False)
    sync(clf.device)
    train_s = time.perf_counter() - t0
    n_epochs = len(clf.history)  # the profile's patience may stop early
    clf.predict_proba(test.subset(np.arange(min(len(test), cfg["eval_batch_size"]))))  # warm-up

    # ---- the bare network -------------------------------------------------------------------
    device = clf.device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        clf.net.eval()(torch.zeros(1, 1, 32, 32, device=device))
    fwd = counter.get_total_flops()
    gen = seeds.torch_generator(args.seed, "benchmark", "classifier", "raw")
    n_train_images = n_epochs * len(train)
    raw_train_s = raw_train(copy.deepcopy(clf.net), n_train_images, cfg["batch_size"], device, gen)
    eval_times, raw_times = [], []
    for _ in range(args.reps):  # interleaved, so drift on a shared machine hits both alike
        t0 = time.perf_counter()
        clf.predict_proba(test)
        eval_times.append(time.perf_counter() - t0)
        raw_times.append(raw_eval(clf.net, len(test), cfg["eval_batch_size"], device, gen))
    eval_s, raw_eval_s = float(np.median(eval_times)), float(np.median(raw_times))

    def row(name, images, seconds, flops_per_image):
        return {"measure": name, "images": images, "seconds": seconds, "images/s": images / seconds,
                "GFLOP/s": images / seconds * flops_per_image / 1e9}

    rows = [row("train pipeline (fit_classifier)", n_train_images, train_s, 3 * fwd),
            row("raw train (fwd+bwd+Adam, random)", n_train_images, raw_train_s, 3 * fwd),
            row("eval pipeline (predict_proba)", len(test), eval_s, fwd),
            row("raw eval (inference fwd, random)", len(test), raw_eval_s, fwd)]
    for pipe, raw in ((0, 1), (2, 3)):
        rows[pipe]["pipeline / raw"] = rows[pipe]["images/s"] / rows[raw]["images/s"]
        rows[raw]["pipeline / raw"] = float("nan")
    print(f"\nnet: {n_parameters(clf.net) / 1e3:.0f}k parameters, forward {fwd / 1e6:.1f} MFLOP/image "
          f"(train ≈ 3× = {3 * fwd / 1e6:.1f} MFLOP/image), device {device}; the train pipeline includes "
          f"{n_epochs} validation pass(es) over {len(val)} images; eval: median of {args.reps}\n")
    print(to_markdown(pd.DataFrame(rows).set_index("measure"), ".2f"))

if __name__ == "__main__":
    main()
