"""Every random choice in the project derives from the profile's one integer seed.

A *named stream* is the profile seed plus a tuple of tags, e.g. ``("reid", "auditor")``. Its
seed is drawn from ``numpy.random.SeedSequence(entropy=seed, spawn_key=words(tags))``, so two
streams with different tags are statistically independent and a stream's seed does not depend
on which other streams exist or in which order they are used.

Per-sample seeds (the diffusion sampler draws each image from its own seed, so a release does
not depend on batch size, chunk size or device count) are packed integers
``stream·2^47 + source·2^16 + attempt·2^8 + candidate`` (``sample_seeds``): injective in
(source, attempt, candidate), so a retry never reuses another source's noise.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive", "sequence", "rng", "torch_generator", "stream_id", "sample_seeds", "SOURCE_BITS", "ATTEMPT_BITS",
           "CANDIDATE_BITS"]

# Packed per-sample seed layout (63 bits): [16-bit stream | 31-bit source | 8-bit attempt | 8-bit candidate]
SOURCE_BITS, ATTEMPT_BITS, CANDIDATE_BITS = 31, 8, 8
_STREAM_BITS = 16


def _word(tag) -> int:
    """A tag as a 64-bit word (sha256 of its text: stable across processes, unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(str(tag).encode()).digest()[:8], "little")


def _sequence(seed: int, tags) -> np.random.SeedSequence:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.SeedSequence(int(seed), spawn_key=tuple(_word(t) for t in tags))


def sequence(seed: int, *tags) -> np.random.SeedSequence:
    """The ``SeedSequence`` of stream ``tags`` (for code that spawns child streams from it)."""
    return _sequence(seed, tags)


def derive(seed: int, *tags) -> int:
    """The seed of stream ``tags``: an integer in [0, 2^63) (valid for numpy and torch)."""
    state = _sequence(seed, tags).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) >> 1


def rng(seed: int, *tags) -> np.random.Generator:
    """A numpy Generator for stream ``tags``."""
    return np.random.default_rng(derive(seed, *tags))


def torch_generator(seed: int, *tags, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` for stream ``tags``."""
    return torch.Generator(device=device).manual_seed(derive(seed, *tags))


def stream_id(seed: int, *tags) -> int:
    """The 16-bit prefix of the packed per-sample seeds of stream ``tags``."""
    return derive(seed, *tags) >> (63 - _STREAM_BITS)


def sample_seeds(stream: int, source, attempt=0, candidate=0) -> np.ndarray:
    """Per-sample seeds ``stream·2^47 + source·2^16 + attempt·2^8 + candidate`` (int64, broadcast).

    Injective in (source, attempt, candidate) for source < 2^31, attempt < 256, candidate < 256
    (checked): no two samples of a stream share a seed.
    """
    src, att, cand = (np.asarray(v, dtype=np.int64) for v in (source, attempt, candidate))
    for name, v, bits in (("source", src, SOURCE_BITS), ("attempt", att, ATTEMPT_BITS),
                          ("candidate", cand, CANDIDATE_BITS)):
        if v.size and (v.min() < 0 or v.max() >= 2**bits):
            raise ValueError(f"{name} index out of range [0, 2^{bits}) for the packed seed: {v.min()}..{v.max()}")
    if not 0 <= int(stream) < 2**_STREAM_BITS:
        raise ValueError(f"stream must be in [0, 2^{_STREAM_BITS}), got {stream}")
    return (np.int64(stream) << 47) | (src << 16) | (att << 8) | cand
