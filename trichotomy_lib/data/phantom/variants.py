"""Scans of PhantomCXR patients that are not in the dataset: graded leaks for the privacy audit.

A privacy metric must fire on leaks of training data short of a copy. The phantom knows each
patient's anatomy and each scan's acquisition separately, so it can render two leaks no real
dataset can provide:

* ``new_scans`` — a further scan of a patient: the same anatomy (heart, ribs, the vessel
  "fingerprint"), a new acquisition (pose, inspiration, exposure, noise, collimation). A
  release that contains it contains the patient but not one of the patient's images: the
  leak a pseudo-conditioned generator that learned the person makes.
* ``acquisition_swap`` — one scan's acquisition and findings rendered on *another* patient's
  anatomy: everything that is not the person (pose, exposure, window, collimation, devices)
  is copied. An attacker who singles the source out from this has learned to read the
  acquisition, not the patient.

Both draw exactly the patient and scan parameters ``generate_phantom`` draws for the same
(seed, site, index), so they refer to the dataset's patients.
"""

from __future__ import annotations

import numpy as np

from .acquisition import default_supersample, expose
from .anatomy import static_layers
from .geometry import ANATOMY_HALF_WIDTH, pixel_grid
from .params import PHANTOM_DEFAULTS, SITES, patient_rng, sample_findings, sample_n_scans, sample_patient, sample_scan
from .render import render_density

__all__ = ["patient_index", "new_scans", "acquisition_swap"]


def patient_index(patient_id: str) -> int:
    """``"a-p00012"`` → 12 (the index ``generate_phantom`` drew the patient with)."""
    try:
        return int(str(patient_id).rsplit("-p", 1)[1].split(":")[0])
    except (IndexError, ValueError):
        raise ValueError(f"{patient_id!r} is not a PhantomCXR patient id ('<site>-p<index>')") from None


class _Renderer:
    def __init__(self, image_size: int, site: str, params: dict | None, supersample: int | None):
        if site not in SITES:
            raise ValueError(f"unknown phantom site {site!r}; known: {sorted(SITES)}")
        self.cfg = {**PHANTOM_DEFAULTS, **(params or {})}
        self.site_cfg = SITES[site]
        self.image_size = image_size
        self.factor = supersample or default_supersample(image_size)
        self.resolution = image_size * self.factor
        self.n_grid = int(np.ceil(self.resolution * ANATOMY_HALF_WIDTH))
        self.grid = pixel_grid(self.n_grid, ANATOMY_HALF_WIDTH)

    def patient(self, seed: int, site: str, index: int, max_scans: int):
        """(patient, findings per scan, the patient's seed sequence), as ``generate_phantom`` draws them."""
        rng = patient_rng(seed, site, index)
        patient = sample_patient(rng, self.cfg)
        n_scans = sample_n_scans(rng, self.cfg, max_scans)
        findings = sample_findings(rng, patient, n_scans, self.cfg, self.site_cfg)
        return patient, findings, rng.bit_generator.seed_seq

    def render(self, patient, scans, findings, scan_rngs) -> np.ndarray:
        static = static_layers(patient, *self.grid, self.n_grid)
        density = render_density(patient, scans, findings, self.resolution, self.site_cfg, static, self.n_grid)
        return expose(density, scans, self.site_cfg, self.image_size, self.factor, scan_rngs)


def new_scans(indices, seed: int, site: str = "a", image_size: int = 32, max_scans: int = 8,
              params: dict | None = None, supersample: int | None = None) -> np.ndarray:
    """One new scan of each patient ``indices[i]``: uint8 (len(indices), image_size, image_size).

    The scan's acquisition comes from the patient's next unused scan stream (the dataset used
    the first ``n_scans``), so it is a genuinely new scan; its findings are those of the
    patient's last scan in the dataset (a follow-up). Arguments as in ``generate_phantom``.
    """
    r = _Renderer(image_size, site, params, supersample)
    out = []
    for index in np.asarray(indices, dtype=np.int64):
        patient, findings, seed_seq = r.patient(seed, site, int(index), max_scans)
        child = seed_seq.spawn(len(findings) + 1)[-1]  # children 0..n-1 are the dataset's scans
        scan_rng = np.random.default_rng(child)
        scan = sample_scan(scan_rng, r.cfg, r.site_cfg)
        out.append(r.render(patient, [scan], [findings[-1]], [scan_rng])[0])
    return np.stack(out)


def acquisition_swap(scan_of, anatomy_of, seed: int, site: str = "a", image_size: int = 32, max_scans: int = 8,
                     params: dict | None = None, supersample: int | None = None) -> np.ndarray:
    """Scan ``k`` of patient ``i`` rendered on patient ``j``'s anatomy, for each
    ``scan_of[m] = (i, k)`` and ``anatomy_of[m] = j`` (j != i): uint8 (M, image_size, image_size).

    The acquisition (pose, inspiration, exposure, noise, collimation, devices) and the findings
    are scan k's, the person is j. Arguments as in ``generate_phantom``.
    """
    r = _Renderer(image_size, site, params, supersample)
    scan_of = [(int(i), int(k)) for i, k in scan_of]
    anatomy_of = [int(j) for j in np.asarray(anatomy_of, dtype=np.int64)]
    if len(scan_of) != len(anatomy_of):
        raise ValueError(f"{len(scan_of)} source scans for {len(anatomy_of)} anatomies")
    out = []
    for (i, k), j in zip(scan_of, anatomy_of):
        if i == j:
            raise ValueError(f"acquisition_swap: anatomy patient {j} is the scan's own patient")
        _, findings, seed_seq = r.patient(seed, site, i, max_scans)
        if not 0 <= k < len(findings):
            raise ValueError(f"patient {i} has {len(findings)} scan(s); no scan {k}")
        scan_rng = np.random.default_rng(seed_seq.spawn(len(findings))[k])
        scan = sample_scan(scan_rng, r.cfg, r.site_cfg)
        other, _, _ = r.patient(seed, site, j, max_scans)
        out.append(r.render(other, [scan], [findings[k]], [scan_rng])[0])
    return np.stack(out)
