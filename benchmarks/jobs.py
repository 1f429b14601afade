"""Side-by-side jobs vs one after another: the reason ``device.job_rounds`` splits the cores.

    .venv/bin/python benchmarks/jobs.py            # 3 classifier seeds, 400 training patients, the recipe's epochs (~5 min)
    .venv/bin/python benchmarks/jobs.py --quick    # 2 seeds, 150 patients, 1 epoch (~20 s; start-up dominates)
    .venv/bin/python benchmarks/jobs.py --denoiser 200   # 2 denoisers of the profile's preset, 200 steps each (~1 min)

The jobs are what a utility row trains: ``stages.utility.fit_seed`` (the reference classifier
recipe of ``--profile``, epochs replaced by ``--epochs``) on PhantomCXR at 32 px, one job per
seed (a row of the default table: 3 seeds, ~1,000 images, 20 epochs). Measured in this process,
wall clock:
- serial: every job in this process, one after another, on all of torch's threads;
- rounds: ``jobs.run_jobs`` (``device.job_rounds``: single-threaded processes side by side, a
  last odd job on every thread).
Printed: seconds of each and the ratio serial / rounds (> 1: side by side is faster), with the
round layout. ``--denoiser N`` makes the jobs two trainings of the profile's denoiser (its
network and training preset on random 32 px images with labels and embeddings, N steps; ``--seeds``,
``--patients``, ``--epochs`` and ``--quick`` are the classifier's and do not apply): what
``trichotomy reproduce`` gains by computing the pipeline's stages side by side (``schedule``). The predictions of both runs are compared (max |Δp|): the same seeds give the
same classifier up to the floating-point order of another thread count (classifier seeds
only). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from trichotomy_lib.config import profile_path
from trichotomy_lib.data.phantom import generate_phantom
from trichotomy_lib.device import job_rounds
from trichotomy_lib.evaluation.classifier import classifier_config
from trichotomy_lib.jobs import run_jobs
from trichotomy_lib.stages.utility import fit_seed


def train_denoiser_job(preset: str, steps: int, seed: int, out: Path, progress: bool = True) -> float:
    """Train the ``preset`` denoiser for ``steps`` steps on random data into ``out`` (a job of
    ``run_jobs``); returns the training seconds."""
    from trichotomy_lib.diffusion.network import Denoiser
    from trichotomy_lib.diffusion.presets import network_preset, train_preset
    from trichotomy_lib.diffusion.train import train_denoiser

    gen = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(1000, 1, 32, 32, generator=gen)
    labels = (torch.rand(1000, 8, generator=gen) < 0.2).float()
    embeddings = torch.randn(1000, 128, generator=gen)
    torch.manual_seed(seed)
    net = Denoiser(**{**network_preset(preset), "in_channels": 1, "sample_size": 32, "label_dim": 8, "embed_dim": 128})
    start = time.perf_counter()
    train_denoiser(net, x, out, {**train_preset(preset), "steps": steps, "guide_step": None}, labels, embeddings,
                   seed=seed, progress=progress)
    return time.perf_counter() - start


def serial_and_rounds(fn, jobs: dict) -> tuple[float, float]:
    """Seconds of ``jobs["serial"]`` one after another in this process and of ``jobs["rounds"]``
    through ``run_jobs``."""
    start = time.perf_counter()
    for job in jobs["serial"]:
        fn(*job, progress=False)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    run_jobs(fn, jobs["rounds"], desc="rounds")
    return serial, time.perf_counter() - start


def report(serial: float, rounds: float, n_jobs: int) -> None:
    print(f"round layout (jobs, threads per job; 0 = all): {job_rounds(n_jobs)}")
    print(f"serial  {serial:7.1f} s")
    print(f"rounds  {rounds:7.1f} s")
    print(f"serial / rounds = {serial / rounds:.2f}")


def denoiser_main(profile: str, steps: int) -> None:
    preset = yaml.safe_load(profile_path(profile).read_text())["diffusion"].get("preset", "default")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {name: [(preset, steps, i, Path(tmp) / name / str(i)) for i in range(2)] for name in ("serial", "rounds")}
        serial, rounds = serial_and_rounds(train_denoiser_job, jobs)
    print(f"2 denoisers of preset {preset!r}, {steps} steps each, torch threads {torch.get_num_threads()}")
    report(serial, rounds, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--patients", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--denoiser", type=int, default=None, metavar="STEPS",
                    help="time two denoiser trainings of STEPS steps instead of classifier seeds")
    args = ap.parse_args()
    if args.denoiser is not None:
        return denoiser_main(args.profile, args.denoiser)
    if args.quick:
        args.seeds, args.patients, args.epochs = 2, 150, 1
    recipe = yaml.safe_load(profile_path(args.profile).read_text())["classifier"]
    recipe = classifier_config({**recipe, **({} if args.epochs is None else {"epochs": args.epochs})})
    train = generate_phantom(args.patients, image_size=32, seed=1)
    val = generate_phantom(max(args.patients // 8, 20), image_size=32, seed=2, first_patient=args.patients)
    test = generate_phantom(max(args.patients // 4, 40), image_size=32, seed=3, first_patient=2 * args.patients)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs = {name: [(train, val, test, recipe, 1000 + i, root / name / str(i)) for i in range(args.seeds)]
                for name in ("serial", "rounds")}
        serial, rounds = serial_and_rounds(fit_seed, jobs)
        diff = max(float(np.abs(np.load(a[-1] / "test_probs.npy") - np.load(b[-1] / "test_probs.npy")).max())
                   for a, b in zip(jobs["serial"], jobs["rounds"]))
    print(f"{args.seeds} classifier seeds, {len(train)} training images, {recipe['epochs']} epochs, "
          f"torch threads {torch.get_num_threads()}")
    report(serial, rounds, args.seeds)
    print(f"max |Δ prediction| between the two runs of the same seeds: {diff:.2e}")


if __name__ == "__main__":
    main()
