"""PhantomCXR knobs (plain dicts) and the random draws of a patient and of each of its scans.

The random draws are made here, from generators that depend only on ``(seed, site, patient
index)``: a patient's anatomy, its number of scans, which findings each scan shows, and each
scan's acquisition. The rest of the randomness follows from them: the vessel trees and the
pneumonia blotches use seeds drawn here, and each scan's noise continues that scan's
generator. The draw order is part of the dataset's definition — reordering two draws changes
every image.

Units: anatomical coordinates (u, v) as in ``geometry`` (the image spans [-1, 1], v down);
"side" 0 = patient right (image left, u < 0), 1 = patient left. Ranges are (low, high) of a
uniform draw unless noted.
"""

from __future__ import annotations

import numpy as np

from ... import seeds

PHANTOM_DEFAULTS: dict = dict(
    # Relative frequency of 1..8 scans per patient (truncated to max_scans, renormalised).
    scans_per_patient_weights=(0.36, 0.20, 0.13, 0.09, 0.07, 0.06, 0.05, 0.04),
    # Pose, per scan: rotation sd (deg, clipped at 2.5 sd), shift (image half-widths), scale.
    rotation_sd_deg=2.0,
    shift_range=0.08,
    scale_range=(0.93, 1.07),
    # Inspiration: diaphragm shift sd (anatomical units, + = expiration, domes higher).
    inspiration_sd=0.035,
    # Exposure, per scan: density window low/high jitter, gamma jitter (multiplies the site's).
    window_low=(0.0, 0.10),
    window_high=(1.40, 1.60),
    gamma_jitter=(0.90, 1.12),
    brightness_sd=0.05,
    noise_jitter=(0.6, 1.5),
    # Findings. Chronic: cardiomegaly, per patient. Acute: a scan is abnormal with
    # ``abnormal_rate`` (site-scaled); it then gets 1/2/3 acute findings with
    # ``n_acute_weights``, classes drawn by ``acute_weights``; each acute finding of the
    # previous scan persists with ``persist_prob``.
    cardiomegaly_rate=0.09,
    abnormal_rate=0.36,
    n_acute_weights=(0.85, 0.13, 0.02),
    acute_weights={
        "Atelectasis": 0.20,
        "Consolidation": 0.14,
        "Edema": 0.12,
        "Pleural Effusion": 0.24,
        "Pneumonia": 0.14,
        "Pneumothorax": 0.16,
    },
    persist_prob=0.30,
    # Cardiomegaly patients get edema/effusion this many times more often.
    cardiac_comorbidity=2.0,
)

# Acquisition style per site (analogues of ChestX-ray14 / MIMIC-CXR / CheXpert).
#   gamma: exponent of the display LUT (< 1 = brighter); noise: quantum-noise sd (0..1 scale);
#   blur: detector blur sd in pixels at 64 px (scales with size); collimation_prob and
#   collimation_value: how often the field is collimated and the grey outside it; marker and
#   marker_corner: burned-in marker ("L", "box", "bar") and its corner (row, col; 0 = top/left);
#   devices_prob: ECG electrodes + a line; heart_magnification: AP projection enlarges the
#   heart; abnormal_scale: multiplies abnormal_rate; lut_curve: S-curve strength of the vendor
#   LUT (> 0 flattens mid-tones, < 0 steepens them), about -0.5..0.5.
SITES: dict = {
    "a": dict(  # ChestX-ray14-like: plain PA, moderate noise, "L" marker top-left, dark borders
        gamma=1.00, noise=0.030, blur=0.0, collimation_prob=0.30, collimation_value=0.0,
        marker="L", marker_corner=(0, 0), devices_prob=0.05, heart_magnification=1.00,
        abnormal_scale=1.0, lut_curve=0.0,
    ),
    "b": dict(  # MIMIC-like: portable AP (magnified heart), ICU devices, bright collimation
        gamma=0.80, noise=0.045, blur=0.5, collimation_prob=0.60, collimation_value=0.85,
        marker="box", marker_corner=(0, 1), devices_prob=0.40, heart_magnification=1.08,
        abnormal_scale=1.25, lut_curve=0.25,
    ),
    "c": dict(  # CheXpert-like: soft (blurred), high-contrast LUT, bar marker bottom-left
        gamma=1.30, noise=0.020, blur=0.9, collimation_prob=0.15, collimation_value=0.0,
        marker="bar", marker_corner=(1, 0), devices_prob=0.15, heart_magnification=1.03,
        abnormal_scale=1.1, lut_curve=-0.3,
    ),
}

# The acute findings, in the order of the per-scan ``severity`` and ``finding_jitter`` rows.
ACUTE_FINDINGS = ("Atelectasis", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia", "Pneumothorax")


def patient_rng(seed: int, site: str, index: int) -> np.random.Generator:
    """The generator of patient ``index``: depends only on (seed, site, index)."""
    return np.random.default_rng(seeds.sequence(seed, "phantom", site, int(index)))


def _uniform(rng: np.random.Generator, low_high) -> float:
    return float(rng.uniform(*low_high))


def per_scan(scans: list[dict], value) -> np.ndarray:
    """Stack ``value(scan)`` over the scans as an (S, 1, 1) float64 array (broadcasts over pixels)."""
    return np.array([value(scan) for scan in scans], dtype=np.float64)[:, None, None]


def sample_patient(rng: np.random.Generator, cfg: dict) -> dict:
    """Stable anatomy of one patient, its chronic finding, and where its acute findings show.

    Lengths are anatomical units: half-widths ("_hw", "_ax", "_ay"), centres ("_cx", "_cy", "_y").
    Two-element arrays are per side (0 = patient right, 1 = patient left).
    """
    patient: dict = {}
    # Body and lungs: superellipses |u - cx|^p / ax^p + |v - cy|^p / ay^p <= 1.
    patient["body_hw"] = _uniform(rng, (0.82, 1.06))
    patient["neck_hw"] = _uniform(rng, (0.20, 0.28))
    patient["lung_cx"] = _uniform(rng, (0.36, 0.48)) + np.array([0.0, 0.0])  # distance from the midline
    patient["lung_cx"] += rng.uniform(-0.03, 0.03, 2)
    patient["lung_cy"] = _uniform(rng, (-0.14, 0.04))
    patient["lung_ax"] = _uniform(rng, (0.28, 0.40)) + rng.uniform(-0.04, 0.04, 2)
    patient["lung_ay"] = _uniform(rng, (0.66, 0.86))
    patient["lung_exponent"] = _uniform(rng, (2.0, 2.8))  # 2 = ellipse, larger = boxier
    # Diaphragm domes: parabolas; the right one (side 0) sits higher by ``dome_asym``.
    patient["dome_y"] = _uniform(rng, (0.34, 0.52))
    patient["dome_asym"] = _uniform(rng, (-0.02, 0.16))
    patient["dome_curvature"] = _uniform(rng, (0.7, 1.6))
    patient["dome_peak"] = _uniform(rng, (0.30, 0.42))  # |u| of the top of each dome
    # Heart (image right of midline, rotated ellipse), mediastinum, aortic knob.
    patient["heart_cx"] = _uniform(rng, (0.04, 0.20))
    patient["heart_up"] = _uniform(rng, (0.12, 0.20))  # heart centre this far above the left dome
    patient["heart_ax"] = _uniform(rng, (0.28, 0.38))
    patient["heart_ay"] = _uniform(rng, (0.24, 0.36))
    patient["heart_rotation"] = _uniform(rng, (-0.55, -0.05))  # radians; apex points down-left
    patient["mediastinum_hw"] = _uniform(rng, (0.09, 0.18))
    patient["mediastinum_shift"] = _uniform(rng, (-0.06, 0.06))
    patient["aortic_knob_r"] = _uniform(rng, (0.04, 0.10))
    patient["aortic_knob_y"] = _uniform(rng, (-0.40, -0.28))
    # Spine (a scoliotic curve in ~10 % of patients), ribs, clavicles.
    spine_amplitude = _uniform(rng, (0.0, 0.04))
    scoliosis = _uniform(rng, (0.04, 0.09)) if rng.random() < 0.10 else 0.0
    patient["spine_amplitude"] = spine_amplitude + scoliosis
    patient["spine_phase"] = _uniform(rng, (0, 2 * np.pi))
    patient["vertebra_period"] = _uniform(rng, (0.10, 0.13))  # vertical pitch of vertebral bodies
    patient["rib_spacing"] = _uniform(rng, (0.11, 0.17))
    patient["rib_phase"] = _uniform(rng, (0.0, 1.0))  # fraction of a rib period
    patient["rib_curve"] = _uniform(rng, (0.30, 0.70))  # how much the ribs droop laterally
    patient["clavicle_y"] = _uniform(rng, (-0.78, -0.56))
    patient["clavicle_tilt"] = _uniform(rng, (-0.35, 0.10))
    patient["clavicle_hw"] = _uniform(rng, (0.022, 0.035))  # half-thickness of the clavicle bar
    # Soft tissue: breast shadows (~half the patients), gastric bubble, humeral heads.
    patient["breast_density"] = _uniform(rng, (0.10, 0.22)) if rng.random() < 0.5 else 0.0
    patient["breast_y"] = _uniform(rng, (0.30, 0.50))
    patient["gastric_bubble"] = (  # (u, depth below the left dome, radius)
        _uniform(rng, (0.25, 0.45)), _uniform(rng, (0.05, 0.11)), _uniform(rng, (0.03, 0.07)))
    patient["humerus_y"] = _uniform(rng, (-0.80, -0.62))
    # Fingerprint: vessel trees (own seed) and a low-frequency lung texture of 8 plane waves
    # with wavevectors of length 3..9 (complex: real = along u, imag = along v).
    patient["vessel_seed"] = int(rng.integers(2**31))
    n_waves = 8
    patient["texture_wavevectors"] = (rng.uniform(3.0, 9.0, n_waves)
                                      * np.exp(1j * rng.uniform(0, 2 * np.pi, n_waves)))
    patient["texture_phases"] = rng.uniform(0, 2 * np.pi, n_waves)
    patient["texture_amplitude"] = _uniform(rng, (0.15, 0.25))
    # Stable marks: a calcified granuloma (side, u and v in lung half-widths, radius) in most
    # patients, sternotomy wires (v of the top loop) in a few.
    if rng.random() < 0.80:
        patient["granuloma"] = (int(rng.integers(2)), _uniform(rng, (-0.5, 0.5)), _uniform(rng, (-0.5, 0.4)),
                                _uniform(rng, (0.03, 0.05)))
    else:
        patient["granuloma"] = None
    patient["sternal_wires_y"] = _uniform(rng, (-0.45, -0.25)) if rng.random() < 0.06 else None
    # Chronic finding, and where each acute finding shows whenever this patient has it.
    patient["cardiomegaly"] = rng.random() < cfg["cardiomegaly_rate"]
    patient["cardiomegaly_scale"] = _uniform(rng, (1.25, 1.40))  # heart width factor (CTR > 0.5)
    patient["finding_geometry"] = {
        # side 2 = bilateral; height = fluid level above the dome at full severity
        "Pleural Effusion": dict(side=int(rng.integers(3)), height=_uniform(rng, (0.20, 0.45))),
        # depth = width of the air rim, as a fraction of the lung's radius
        "Pneumothorax": dict(side=int(rng.integers(2)), depth=_uniform(rng, (0.25, 0.45))),
        # y = band centre in lung half-heights below the lung centre; tilt in radians
        "Atelectasis": dict(side=int(rng.integers(2)), y=_uniform(rng, (0.05, 0.30)),
                            tilt=_uniform(rng, (-0.3, 0.3)), length=_uniform(rng, (0.30, 0.45))),
        # lobe 0 = upper, 1 = lower; size = radius
        "Consolidation": dict(side=int(rng.integers(2)), lobe=int(rng.integers(2)),
                              size=_uniform(rng, (0.16, 0.30))),
        # x, y = centre in lung half-widths / half-heights; size = blotch spread
        "Pneumonia": dict(side=int(rng.integers(2)), x=_uniform(rng, (-0.45, 0.45)), y=_uniform(rng, (-0.45, 0.35)),
                          size=_uniform(rng, (0.16, 0.26))),
        # spread = vertical extent of the perihilar haze
        "Edema": dict(spread=_uniform(rng, (0.18, 0.30))),
    }
    return patient


def sample_n_scans(rng: np.random.Generator, cfg: dict, max_scans: int) -> int:
    """Number of scans of a patient, 1..max_scans, drawn by ``scans_per_patient_weights``."""
    weights = np.asarray(cfg["scans_per_patient_weights"][:max_scans], dtype=np.float64)
    return int(rng.choice(len(weights), p=weights / weights.sum())) + 1


def sample_findings(rng: np.random.Generator, patient: dict, n_scans: int, cfg: dict, site_cfg: dict) -> list[set[str]]:
    """Per scan, the set of positive finding names (never contains 'No Finding').

    Cardiomegaly is on every scan of a cardiomegaly patient. Acute findings: a previous scan's
    finding persists with ``persist_prob``; the scan is abnormal with ``abnormal_rate`` x the
    site's ``abnormal_scale`` and then gains 1-3 distinct findings.
    """
    weights = dict(cfg["acute_weights"])
    if patient["cardiomegaly"]:  # heart failure brings fluid: edema and effusions
        for name in ("Edema", "Pleural Effusion"):
            weights[name] *= cfg["cardiac_comorbidity"]
    names = list(weights)
    class_weights = np.array([weights[name] for name in names])
    abnormal_rate = min(1.0, cfg["abnormal_rate"] * site_cfg["abnormal_scale"])
    n_acute_weights = np.asarray(cfg["n_acute_weights"]) / np.sum(cfg["n_acute_weights"])
    per_scan_findings, previous = [], set()
    for _ in range(n_scans):
        # sorted: set iteration order varies with PYTHONHASHSEED, the draws must not.
        acute = {name for name in sorted(previous) if rng.random() < cfg["persist_prob"]}
        if rng.random() < abnormal_rate:
            n_new = int(rng.choice(3, p=n_acute_weights)) + 1
            acute |= set(rng.choice(names, size=n_new, replace=False, p=class_weights / class_weights.sum()).tolist())
        previous = acute
        per_scan_findings.append(acute | ({"Cardiomegaly"} if patient["cardiomegaly"] else set()))
    return per_scan_findings


def sample_scan(rng: np.random.Generator, cfg: dict, site_cfg: dict) -> dict:
    """Acquisition of one scan: pose, inspiration, exposure, collimation, finding severities.

    The same generator goes on to draw this scan's noise (``acquisition.expose``).
    """
    scan: dict = {}
    max_rotation = 2.5 * cfg["rotation_sd_deg"]
    scan["rotation"] = np.deg2rad(np.clip(rng.normal(0, cfg["rotation_sd_deg"]), -max_rotation, max_rotation))
    scan["shift"] = rng.uniform(-cfg["shift_range"], cfg["shift_range"], 2)  # (x, y), image half-widths
    scan["scale"] = _uniform(rng, cfg["scale_range"])
    scan["inspiration"] = float(np.clip(rng.normal(0, cfg["inspiration_sd"]), -0.12, 0.12))  # + = domes higher
    scan["window"] = (_uniform(rng, cfg["window_low"]), _uniform(rng, cfg["window_high"]))  # density → 0, 1
    scan["gamma"] = site_cfg["gamma"] * _uniform(rng, cfg["gamma_jitter"])
    scan["brightness"] = float(rng.normal(0, cfg["brightness_sd"]))
    scan["noise"] = site_cfg["noise"] * _uniform(rng, cfg["noise_jitter"])
    scan["gradient"] = rng.normal(0, 0.05, 2)  # (x, y) brightness slope: heel effect, scatter
    scan["collimated"] = rng.random() < site_cfg["collimation_prob"]
    scan["collimation_margins"] = rng.uniform(0.02, 0.14, 4)  # top, bottom, left, right (fraction of width)
    scan["marker_jitter"] = rng.uniform(0.0, 0.06, 2)  # (x, y) inward offset of the marker
    scan["has_devices"] = rng.random() < site_cfg["devices_prob"]
    scan["device_positions"] = rng.uniform(-0.6, 0.6, (3, 2))  # ECG electrodes, image frame
    scan["severity"] = rng.uniform(0.55, 1.0, len(ACUTE_FINDINGS))  # per acute finding, used if present
    scan["finding_jitter"] = rng.normal(0, 0.03, (len(ACUTE_FINDINGS), 2))  # (u, v) shift of focal findings
    # Not used by the renderer; drawn so that the noise this generator draws next stays put.
    scan["patch_seed"] = int(rng.integers(2**31))
    return scan
