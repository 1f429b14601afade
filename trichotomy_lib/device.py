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
