"""Device handling, in one place: CPU by default, CUDA when present, several GPUs via accelerate.

Every module that runs a model asks here for its device or its ``Accelerator``; nothing else
in the library calls ``torch.cuda`` directly.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from functools import lru_cache

import torch
from torch import nn

# ``precision`` of a training loop (the ``classifier`` and ``reid`` sections): "fp32", "bf16"
# (autocast to bfloat16: convolutions and matmuls in bf16, weights, optimizer and reductions in
# fp32) or "auto" (bf16 where the device computes it natively, else fp32).
PRECISIONS = ("auto", "fp32", "bf16")


def default_device() -> torch.device:
    """``cuda`` if a GPU is visible (and TRICHOTOMY_DEVICE does not say otherwise), else ``cpu``."""
    forced = os.environ.get("TRICHOTOMY_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=None)
def accelerator(mixed_precision: str = "no"):
    """The process-wide ``accelerate.Accelerator`` (one per mixed-precision mode).

    Under ``accelerate launch`` on several GPUs this is the distributed one; in a notebook or
    a plain ``python`` process it is a single-device one on ``default_device()``.
    """
    from accelerate import Accelerator

    cpu = default_device().type == "cpu"
    return Accelerator(cpu=cpu, mixed_precision="no" if cpu else mixed_precision)


@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX (read from ``/proc/cpuinfo``; other systems: False). Elsewhere bf16
    is emulated and slower than fp32, so ``precision="auto"`` stays in fp32 there."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(precision: str, device: torch.device | str, field: str = "precision") -> str:
    """``precision`` ("auto", "fp32" or "bf16") → the one a training loop uses on ``device``.

    "auto" is "bf16" where ``native_bf16(device)``, else "fp32". On an AVX-512 BF16 CPU (1 or 2
    threads), bf16 trains the reference classifier 1.75–1.8x faster than fp32 in the same layout,
    at the same test AUROC; the verifier, whose step is not where its time goes, no faster
    (``benchmarks/precision.py``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"{field}={precision!r}: choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device | str, precision: str):
    """The context of a training step's forward pass and loss: bf16 autocast for "bf16", none
    for "fp32" (``precision`` already resolved by ``resolve_precision``)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"autocast: precision must be resolved to 'fp32' or 'bf16', got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its 4-d weights in channels-last (NHWC) layout, in place, and returned.

    The layout only: every weight keeps its value, and outputs agree with NCHW to float
    rounding. Convolutions then run in NHWC, which trains the reference classifier 1.1–1.2x and
    the verifier 1.4x faster on CPU (``benchmarks/precision.py``). Saved weights are contiguous
    copies (``checkpoint.save_weights``), so files do not depend on it."""
    return module.to(memory_format=torch.channels_last)


def cpu_cores() -> int:
    """Cores this process may use (``sched_getaffinity`` where the OS has it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def job_workers() -> int:
    """How many independent jobs (or pipeline stages) run side by side: one per core on a CPU,
    one on a GPU; ``TRICHOTOMY_WORKERS`` (an integer >= 1) caps it."""
    workers = cpu_cores() if default_device().type == "cpu" else 1
    forced = os.environ.get("TRICHOTOMY_WORKERS")
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"TRICHOTOMY_WORKERS must be an integer >= 1, got {forced!r}")
        workers = min(workers, int(forced))
    return workers


def job_rounds(n_jobs: int) -> list[tuple[int, int]]:
    """How ``n_jobs`` independent small trainings share the machine: ``[(jobs, threads), ...]``.

    On CPU, small networks use a second thread poorly, so jobs run side by side in rounds of
    ``cores`` single-threaded processes (measured on 2 cores: the default's two defender replicas
    in 388 s side by side against 274 s for one alone, 1.41x; a utility row's 3 classifier seeds
    1.07x, ``benchmarks/jobs.py``); a last, smaller round gives each job ``cores // jobs``
    threads (a single job runs alone on every core). On a GPU, one job at a time (``[(1, 0)]``
    per job; 0: leave the thread count alone). ``TRICHOTOMY_WORKERS=1`` forces one job at a time.
    """
    if n_jobs < 1:
        return []
    workers = job_workers()
    rounds = []
    while n_jobs > 0:
        size = min(workers, n_jobs)
        rounds.append((size, 0 if size == 1 else max(1, cpu_cores() // size)))
        n_jobs -= size
    return rounds
