"""Denoiser benchmark: time-to-quality, achieved FLOP/s, fast vs Heun sampler (ratios, one run).

    .venv/bin/python benchmarks/denoiser.py            # full (~25 min on 2 busy cores)
    .venv/bin/python benchmarks/denoiser.py --quick    # shrunk budget (~8 min)
    .venv/bin/python benchmarks/denoiser.py --parts b  # FLOP/s only (~1 min)

Data: PhantomCXR, 32 px (``generate_phantom(n_patients, 32, seed=0)``, all scans).
Fréchet distance (``evaluation.stats.frechet_distance``) in a fixed feature space: the first
``--pca`` principal components of the real images' pixels (PCA fitted once on the real set;
reference = the real set), between ``--n-fd`` generated samples (fixed seeds) and the real set.

(a) time-to-quality: a diffusers ``UNet2DModel`` in the shape of diffusers' unconditional
    training example scaled to 32 px ((32, 64, 64) channels, one layer per block, attention
    at the middle level) trains for ``--budget`` seconds; its FD is the target. The project's
    denoiser (``--preset``) trains under the same EDM loss, optimizer, batch and data,
    evaluated at fractions of the budget; we report the first training time at which its FD
    is <= the target (target: <= 1/2 of the budget). Training clocks exclude evaluation.
(b) achieved FLOP/s of one training step (fwd + bwd + Adam; FLOPs by
    ``torch.utils.flop_counter.FlopCounterMode``) against a 2048² fp32 matmul, same run.
(c) Heun (32 steps, 63 evaluations) vs DPM-Solver++(2M) (diffusers EDM scheduler) at several
    step counts: samples/s and FD (target: the fast sampler at equal FD with <= 1/2 the evaluations).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from trichotomy_lib.data import generate_phantom
from trichotomy_lib.diffusion.edm import edm_loss, sample_sigma
from trichotomy_lib.diffusion.ema import ema_beta, make_ema, update_ema
from trichotomy_lib.diffusion.network import Denoiser
from trichotomy_lib.diffusion.presets import network_preset, train_preset
from trichotomy_lib.diffusion.sampler import network_evaluations, sample
from trichotomy_lib.diffusion.train import check_hyperparameters
from trichotomy_lib.evaluation.stats import frechet_distance


class DiffusersUNet(torch.nn.Module):
    """diffusers ``UNet2DModel`` with the ``Denoiser`` call signature, so the same EDM code drives it."""

    def __init__(self, sample_size=32):
        from diffusers import UNet2DModel

        super().__init__()
        self.unet = UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
        self.config = type("cfg", (), dict(sigma_data=0.5, in_channels=1, sample_size=sample_size, label_dim=0, embed_dim=0))()

    def check_condition(self, n, labels, embedding):
        pass

    def forward(self, x, c_noise, labels=None, embedding=None):
        return self.unet(x, c_noise * 250).sample  # ln(σ)/4 spread over a DDPM-like timestep range


class PCAFeatures:
    """Fixed feature space: top-k principal components of the real images' pixels."""

    def __init__(self, real: torch.Tensor, k: int):
        x = real.flatten(1).double().numpy()
        self.mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = vt[:k].T
        self.real = self(real)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return (images.flatten(1).double().numpy() - self.mean) @ self.basis

    def fd(self, images: torch.Tensor) -> float:
        return frechet_distance(self(images), self.real)


def fd_of(net, feats, n, steps=18, solver="heun", seed0=10_000):
    net.eval()
    x = sample(net, None, range(seed0, seed0 + n), steps=steps, solver=solver, batch_size=128)
    net.train()
    return feats.fd(x)


def train_for(net, images, seconds, hp, checkpoints, feats, n_fd, seed=0, label=""):
    """Train with the EDM loss for ``seconds`` of training time; FD of the EMA at each checkpoint time."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], betas=hp["adam_betas"])
    ema = make_ema(net)
    clock, step, out, marks = 0.0, 0, [], sorted(checkpoints)
    b = hp["batch_size"]
    while marks:
        t0 = time.perf_counter()
        idx = torch.randint(len(images), (b,), generator=gen)
        sigma = sample_sigma(b, hp["p_mean"], hp["p_std"], gen)
        noise = torch.randn((b, *images.shape[1:]), generator=gen)
        for g in opt.param_groups:
            g["lr"] = hp["lr"] * min(1.0, (step + 1) / hp["lr_warmup_steps"])
        loss = edm_loss(net, images[idx], sigma, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        update_ema(ema, net, ema_beta(b, step * b, hp["ema_halflife_images"], hp["ema_rampup"]))
        clock += time.perf_counter() - t0
        if clock >= marks[0]:
            marks.pop(0)
            fd = fd_of(ema, feats, n_fd)
            out.append((clock, step, fd))
            print(f"  {label:10s} train time {clock:7.1f}s  step {step:5d}  loss {loss.item():.4f}  FD {fd:8.3f}", flush=True)
    return ema, out


def step_flops_and_time(net, batch, reps=3):
    x = torch.randn(batch, 1, 32, 32)
    sigma = sample_sigma(batch, -1.2, 1.2)
    noise = torch.randn_like(x)
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def step():
        opt.zero_grad()
        edm_loss(net, x, sigma, noise).mean().backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return counter.get_total_flops(), float(np.median(times))


def matmul_flops_per_s(n=2048, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="budget 150 s, 256 FD samples, fewer sampler settings")
    ap.add_argument("--budget", type=float, default=None, help="baseline training seconds (default 600; quick 150)")
    ap.add_argument("--preset", default="default", help="project denoiser preset (presets.py)")
    ap.add_argument("--n-patients", type=int, default=500)
    ap.add_argument("--n-fd", type=int, default=None, help="samples per FD (default 500; quick 256)")
    ap.add_argument("--pca", type=int, default=32, help="PCA components of the FD feature space")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="abc", help="which parts to run, e.g. 'b' for FLOP/s only (default abc)")
    ap.add_argument("--skip-baseline", type=float, default=None, help="use this FD as the target instead of training the baseline")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budget = args.budget or (150.0 if args.quick else 600.0)
    n_fd = args.n_fd or (256 if args.quick else 500)

    images = generate_phantom(args.n_patients, 32, seed=0).tensor()
    feats = PCAFeatures(images, args.pca)
    print(f"data: PhantomCXR 32 px, {len(images)} images; FD in PCA-{args.pca} pixel space, {n_fd} samples, Heun-18 for (a)")
    hp = check_hyperparameters(train_preset(args.preset))
    print(f"training: batch {hp['batch_size']}, Adam lr {hp['lr']}, EMA half-life {hp['ema_halflife_images']} images, "
          f"P_mean {hp['p_mean']}, P_std {hp['p_std']}, {args.threads} threads, fp32")

    # ---- (b) FLOP/s -----------------------------------------------------------------------
    if "b" in args.parts:
        torch.manual_seed(0)
        mine = Denoiser(**network_preset(args.preset))
        torch.manual_seed(0)
        base = DiffusersUNet()
        print("\n(b) achieved FLOP/s (one training step, batch", hp["batch_size"], ")")
        # the reference drifts on a shared machine: the median of matmul runs taken between the steps
        peaks, rows = [matmul_flops_per_s()], []
        for name, net in (("diffusers UNet2DModel", base), (f"Denoiser[{args.preset}]", mine)):
            flops, sec = step_flops_and_time(net, hp["batch_size"])
            peaks.append(matmul_flops_per_s())
            params = sum(p.numel() for p in net.parameters()) / 1e6
            rows.append((name, params, flops / 1e9, sec, flops / sec / 1e9))
        peak = float(np.median(peaks))
        print(f"  fp32 matmul 2048²: median {peak / 1e9:.1f} GFLOP/s of {len(peaks)} runs "
              f"({', '.join(f'{p / 1e9:.0f}' for p in peaks)})")
        print(f"  {'network':24s} {'params':>7s} {'GFLOP/step':>10s} {'s/step':>7s} {'GFLOP/s':>8s} {'of matmul':>9s}")
        for name, params, gf, sec, gfs in rows:
            print(f"  {name:24s} {params:6.2f}M {gf:10.1f} {sec:7.3f} {gfs:8.1f} {gfs * 1e9 / peak:9.0%}")
    if not set(args.parts) & set("ac"):
        return

    # ---- (a) time to quality --------------------------------------------------------------
    # (a) runs whenever (c) is asked for: (c) samples the model (a) trains
    print(f"\n(a) time-to-quality (baseline budget {budget:.0f} s of training)")
    if args.skip_baseline is None:
        torch.manual_seed(0)
        _, base_curve = train_for(DiffusersUNet(), images, budget, hp, [budget], feats, n_fd, label="UNet2DModel")
        target = base_curve[-1][2]
    else:
        target = args.skip_baseline
    torch.manual_seed(0)
    marks = [budget * f for f in (0.125, 0.25, 0.375, 0.5, 0.75, 1.0)]
    ema, curve = train_for(Denoiser(**network_preset(args.preset)), images, budget, hp, marks, feats, n_fd, label="Denoiser")
    reached = next((c for c in curve if c[2] <= target), None)
    print(f"  target FD (UNet2DModel after {budget:.0f} s): {target:.3f}")
    if reached:
        print(f"  Denoiser reaches it after {reached[0]:.0f} s = {reached[0] / budget:.0%} of the budget (target <= 50%)")
    else:
        print(f"  Denoiser does not reach it within the budget (best FD {min(c[2] for c in curve):.3f})")

    # ---- (c) samplers ---------------------------------------------------------------------
    print(f"\n(c) samplers on the Denoiser's EMA ({n_fd} samples each)")
    settings = [("heun", 32), ("heun", 18), ("dpm", 32), ("dpm", 16), ("dpm", 10)]
    if args.quick:
        settings = [("heun", 32), ("dpm", 16), ("dpm", 10)]
    ema.eval()
    print(f"  {'sampler':12s} {'NFE':>4s} {'samples/s':>9s} {'FD':>8s}")
    for solver, steps in settings:
        t0 = time.perf_counter()
        x = sample(ema, None, range(20_000, 20_000 + n_fd), steps=steps, solver=solver, batch_size=128)
        sec = time.perf_counter() - t0
        print(f"  {solver + '-' + str(steps):12s} {network_evaluations(steps, solver):4d} {n_fd / sec:9.1f} {feats.fd(x):8.3f}", flush=True)
    real_split = feats.fd(images[torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[:n_fd]])
    print(f"  (floor: FD of {n_fd} real images vs the real set: {real_split:.3f})")


if __name__ == "__main__":
    main()
