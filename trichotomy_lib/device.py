"""Device handling, in one place: CPU by default, CUDA when present, several GPUs via accelerate.

Every module that runs a model asks here for its device or its ``Accelerator``; nothing else
in the library calls ``torch.cuda`` directly.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch


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


def cpu_cores() -> int:
    """Cores this process may use (``sched_getaffinity`` where the OS has it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


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
    workers = cpu_cores() if default_device().type == "cpu" else 1
    forced = os.environ.get("TRICHOTOMY_WORKERS")
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"TRICHOTOMY_WORKERS must be an integer >= 1, got {forced!r}")
        workers = min(workers, int(forced))
    rounds = []
    while n_jobs > 0:
        size = min(workers, n_jobs)
        rounds.append((size, 0 if size == 1 else max(1, cpu_cores() // size)))
        n_jobs -= size
    return rounds
