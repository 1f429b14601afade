"""The scan renderer (a patient's anatomy + findings → density, per scan) and ``generate_phantom``."""

from __future__ import annotations

import numpy as np

from ..imageset import LABELS, ImageSet
from .acquisition import default_supersample, expose
from .anatomy import chest_anatomy, gastric_bubble, static_layers
from .findings import FINDINGS, FindingLayers, atelectasis_volume_loss, cardiomegaly
from .geometry import ANATOMY_HALF_WIDTH, image_to_anatomy, pixel_grid, warp_to_scans
from .params import (
    ACUTE_FINDINGS,
    PHANTOM_DEFAULTS,
    SITES,
    patient_rng,
    per_scan,
    sample_findings,
    sample_n_scans,
    sample_patient,
    sample_scan,
)


def render_density(patient: dict, scans: list[dict], findings: list[set[str]], resolution: int, site_cfg: dict,
                   static: dict, n_grid: int) -> np.ndarray:
    """Density maps (S, resolution, resolution) of all scans of one patient.

    Args:
        patient: the patient's draws (``params.sample_patient``).
        scans: one acquisition dict per scan (``params.sample_scan``).
        findings: per scan, the set of positive finding names.
        resolution: render side in pixels (output size x supersampling).
        site_cfg: the site's style (its ``heart_magnification`` is used here).
        static: the patient's static layers on the anatomical grid (``anatomy.static_layers``).
        n_grid: side of the anatomical grid in pixels.

    Returns:
        Density in soft tissue units, >= 0 (bright = dense).
    """
    # Where in the patient each pixel of each scan looks, and the static layers seen there.
    x, y = pixel_grid(resolution, 1.0)
    u, v = image_to_anatomy(x, y, per_scan(scans, lambda scan: scan["rotation"]),
                            per_scan(scans, lambda scan: scan["shift"][0]),
                            per_scan(scans, lambda scan: scan["shift"][1]),
                            per_scan(scans, lambda scan: scan["scale"]))
    warped = warp_to_scans(static, u, v, n_grid)
    inspiration = per_scan(scans, lambda scan: scan["inspiration"])

    def severity(name):  # (S, 1, 1): the scan's severity draw where the finding is present, else 0
        i = ACUTE_FINDINGS.index(name)
        present = np.array([name in positive for positive in findings], dtype=np.float64)[:, None, None]
        return per_scan(scans, lambda scan: scan["severity"][i]) * present

    def jitter(name):  # ((S, 1, 1), (S, 1, 1)): the scan's (u, v) shift of a focal finding
        i = ACUTE_FINDINGS.index(name)
        return (per_scan(scans, lambda scan: scan["finding_jitter"][i][0]),
                per_scan(scans, lambda scan: scan["finding_jitter"][i][1]))

    # Findings that change the anatomy: cardiomegaly (heart size) and atelectasis (volume loss).
    enlargement, enlargement_shift = cardiomegaly(patient)
    heart_scale = site_cfg["heart_magnification"] * enlargement
    mediastinal_shift, dome_lift = atelectasis_volume_loss(patient, severity("Atelectasis"))
    chest = chest_anatomy(patient, u, v, inspiration, warped["detail"], heart_scale, enlargement_shift,
                          mediastinal_shift, dome_lift)

    # Findings drawn into the lungs.
    layers = FindingLayers(air=chest.air, opacity=np.zeros(u.shape), marking_keep=np.ones(u.shape),
                           added_density=np.zeros(u.shape))
    for name, draw in FINDINGS.items():
        name_severity = severity(name)
        if name_severity.any():
            draw(patient, chest, name_severity, jitter(name), layers)
    opacity = np.clip(layers.opacity, 0, 1)

    # Aerated lung not hidden by the heart and mediastinum shows the vessel markings.
    lung_any = (np.clip(chest.lungs[0].mask + chest.lungs[1].mask, 0, 1)
                * (1.0 - chest.heart) * (1.0 - chest.mediastinum))
    bubble = gastric_bubble(patient, u, v, inspiration)  # below the domes: abdomen + stomach air
    density = (
        + 0.10 * chest.heart + 0.06 * chest.mediastinum  # heart and great vessels are thicker than lung
        - layers.air * (1.0 - opacity)  # air removes density; fluid and tissue put it back
        - 0.12 * chest.trachea - 0.35 * bubble
        + lung_any * (1.0 - opacity) * layers.marking_keep * warped["detail"]
        + warped["base"] + layers.added_density)
    return np.clip(density, 0, None)


def generate_phantom(
    n_patients: int,
    image_size: int = 32,
    seed: int = 0,
    site: str = "a",
    max_scans: int = 8,
    first_patient: int = 0,
    supersample: int | None = None,
    params: dict | None = None,
    progress: bool = False,
) -> ImageSet:
    """Generate PhantomCXR: ``n_patients`` patients with 1..``max_scans`` scans each.

    Args:
        n_patients: number of patients (>= 1). Mean scans per patient ~2.8 with the default
            weights, so 1,000 patients give ~2,800 images.
        image_size: output side in pixels, 16..1024 (32 default; 64/128 show ribs and vessels).
        seed: dataset seed. Patient ``i`` depends only on (seed, site, i): same seed gives
            bit-identical arrays, independent of ``n_patients``.
        site: acquisition style, a key of ``SITES`` ("a", "b", "c"). Sites draw different
            patients (ids "a-p00012" vs "b-p00012") and render them differently.
        max_scans: scans per patient are 1..max_scans (1..8).
        first_patient: index of the first patient (to draw disjoint populations, e.g. a control).
        supersample: render at this factor and block-average (default: 2 up to 128 px, else 1).
        params: overrides of ``PHANTOM_DEFAULTS`` (unknown keys are an error).
        progress: show a tqdm bar.

    Returns:
        ImageSet with names "<site>-p<index:05d>/s<scan:02d>", patient ids "<site>-p<index:05d>".
    """
    if site not in SITES:
        raise ValueError(f"unknown phantom site {site!r}; known: {sorted(SITES)}")
    if not (isinstance(n_patients, (int, np.integer)) and n_patients >= 1):
        raise ValueError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not (isinstance(image_size, (int, np.integer)) and 16 <= image_size <= 1024):
        raise ValueError(f"image_size must be an integer in 16..1024, got {image_size!r}")
    if not (isinstance(max_scans, (int, np.integer)) and 1 <= max_scans <= 8):
        raise ValueError(f"max_scans must be an integer in 1..8, got {max_scans!r}")
    cfg = dict(PHANTOM_DEFAULTS)
    unknown = set(params or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown phantom parameter(s) {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(params or {})
    site_cfg = SITES[site]
    factor = supersample or default_supersample(image_size)
    resolution = image_size * factor
    n_grid = int(np.ceil(resolution * ANATOMY_HALF_WIDTH))  # the anatomical grid, at render resolution
    grid_u, grid_v = pixel_grid(n_grid, ANATOMY_HALF_WIDTH)

    images, labels, patient_ids, names = [], [], [], []
    indices = range(first_patient, first_patient + n_patients)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"PhantomCXR site {site}", unit="patient")
    for index in indices:
        rng = patient_rng(seed, site, index)
        patient = sample_patient(rng, cfg)
        n_scans = sample_n_scans(rng, cfg, max_scans)
        findings = sample_findings(rng, patient, n_scans, cfg, site_cfg)
        scan_rngs = [np.random.default_rng(child) for child in rng.bit_generator.seed_seq.spawn(n_scans)]
        scans = [sample_scan(scan_rng, cfg, site_cfg) for scan_rng in scan_rngs]
        static = static_layers(patient, grid_u, grid_v, n_grid)
        density = render_density(patient, scans, findings, resolution, site_cfg, static, n_grid)
        images.append(expose(density, scans, site_cfg, image_size, factor, scan_rngs))
        patient_id = f"{site}-p{index:05d}"
        for scan_index, positive in enumerate(findings):
            label = np.zeros(len(LABELS), dtype=np.uint8)
            for name in positive:
                label[LABELS.index(name)] = 1
            label[0] = int(not positive)  # No Finding
            labels.append(label)
            patient_ids.append(patient_id)
            names.append(f"{patient_id}/s{scan_index:02d}")
    return ImageSet(
        images=np.concatenate(images),
        labels=np.stack(labels),
        patient_ids=np.array(patient_ids),
        names=np.array(names),
    )
