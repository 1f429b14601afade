"""PhantomCXR: procedurally generated frontal chest radiographs with ground-truth identity.

Every *patient* has a stable anatomy drawn from ``(seed, site, patient index)``: body outline,
two lung fields, heart and mediastinum, trachea, spine, ribs, clavicles, diaphragm domes, a
gastric bubble, and a patient-specific vessel tree + lung texture (the biometric
"fingerprint"), plus occasional stable marks (calcified granuloma, sternal wires, scoliosis).
Every patient has 1-8 *scans* (skewed: most patients have few) that differ in pose (rotation,
shift, magnification), inspiration depth, exposure, noise and collimation. Findings are drawn
on top; cardiomegaly is chronic (all scans of a patient), the six others are acute (they come,
go and sometimes persist to the next scan, keeping the patient's location/side).

Rendering works in two frames:
  * image frame (x, y) in [-1, 1], y pointing down, x to the image right (= patient's left);
  * anatomical frame (u, v) of the patient, reached from (x, y) by the scan's pose.
Static anatomy (bones, vessels, soft tissue) is drawn once per patient on an anatomical grid and
warped into each scan; inspiration-dependent parts (lungs, domes, heart) and findings are
evaluated analytically per scan. Everything is rendered at ``supersample`` x the output size and
block-averaged (anti-aliasing), then blurred/noised/quantised as the site's scanner would.

Densities are in "soft tissue units": 1 = a full-thickness chest of soft tissue, lungs remove
up to ~0.75 of it (air), bones add 0.1-0.35. Bright = dense, as on a radiograph.

Prevalence (per image, site "a", measured on 2,000 patients; see ``PHANTOM_DEFAULTS``):
No Finding ~0.50, Atelectasis ~0.10, Cardiomegaly ~0.09, Consolidation ~0.07, Edema ~0.07,
Pleural Effusion ~0.12, Pneumonia ~0.07, Pneumothorax ~0.07; ~15 % of images carry two or more
labels. ChestX-ray14's train split has No Finding 0.72 and the rare classes at 0.7-9 % — the
phantom boosts the rare classes so a few hundred patients give enough positives of each class.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from .imageset import LABELS, ImageSet

__all__ = ["PHANTOM_DEFAULTS", "SITES", "generate_phantom", "patient_rng"]

# --------------------------------------------------------------------------------------------
# Knobs (plain dicts, EDM2 style). Ranges are (low, high) of a uniform draw unless noted.
# --------------------------------------------------------------------------------------------

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

_ACUTE = ("Atelectasis", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia", "Pneumothorax")
_CANON = 1.45  # the anatomical grid covers u, v in [-_CANON, _CANON]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def patient_rng(seed: int, site: str, index: int) -> np.random.Generator:
    """The generator of patient ``index``: depends only on (seed, site, index)."""
    site_code = zlib.crc32(site.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([int(seed), site_code, int(index)]))


def _ramp(x, edge):
    """Soft step 0→1 around x = 0 over a width ``edge`` (cheap anti-aliased mask)."""
    return np.minimum(np.maximum(0.5 + x / edge, 0.0), 1.0)


def _u(rng, lo_hi):
    return float(rng.uniform(*lo_hi))


def _grid(n: int, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an n x n grid spanning [-half, half]; (x, y), y down."""
    c = (np.arange(n, dtype=np.float64) + 0.5) / n * 2 * half - half
    return c[None, :], c[:, None]


# --------------------------------------------------------------------------------------------
# Patient: stable anatomy, chronic findings, finding "instances" (side/location/size)
# --------------------------------------------------------------------------------------------


def _sample_patient(rng: np.random.Generator, cfg: dict) -> dict:
    p: dict = {}
    # Body and lungs. side index 0 = patient right (image left, u < 0), 1 = patient left.
    p["body_hw"] = _u(rng, (0.82, 1.06))
    p["neck_hw"] = _u(rng, (0.20, 0.28))
    p["lung_cx"] = _u(rng, (0.36, 0.48)) + np.array([0.0, 0.0])
    p["lung_cx"] += rng.uniform(-0.03, 0.03, 2)
    p["lung_cy"] = _u(rng, (-0.14, 0.04))
    p["lung_ax"] = _u(rng, (0.28, 0.40)) + rng.uniform(-0.04, 0.04, 2)
    p["lung_ay"] = _u(rng, (0.66, 0.86))
    p["lung_p"] = _u(rng, (2.0, 2.8))
    # Diaphragm domes: the right one (side 0) sits higher.
    p["dome_y"] = _u(rng, (0.34, 0.52))
    p["dome_asym"] = _u(rng, (-0.02, 0.16))
    p["dome_curv"] = _u(rng, (0.7, 1.6))
    p["dome_peak"] = _u(rng, (0.30, 0.42))
    # Heart (image right of midline), mediastinum, aortic knob, trachea.
    p["heart_cx"] = _u(rng, (0.04, 0.20))
    p["heart_up"] = _u(rng, (0.12, 0.20))  # heart centre this far above the left dome
    p["heart_ax"] = _u(rng, (0.28, 0.38))
    p["heart_ay"] = _u(rng, (0.24, 0.36))
    p["heart_rot"] = _u(rng, (-0.55, -0.05))
    p["med_w"] = _u(rng, (0.09, 0.18))
    p["med_shift"] = _u(rng, (-0.06, 0.06))
    p["knob_r"] = _u(rng, (0.04, 0.10))
    p["knob_y"] = _u(rng, (-0.40, -0.28))
    # Spine (scoliosis in ~10 % of patients), ribs, clavicles.
    p["spine_amp"] = _u(rng, (0.0, 0.04)) + (_u(rng, (0.04, 0.09)) if rng.random() < 0.10 else 0.0)
    p["spine_phase"] = _u(rng, (0, 2 * np.pi))
    p["vert_period"] = _u(rng, (0.10, 0.13))
    p["rib_spacing"] = _u(rng, (0.11, 0.17))
    p["rib_phase"] = _u(rng, (0.0, 1.0))
    p["rib_curve"] = _u(rng, (0.30, 0.70))
    p["clav_y"] = _u(rng, (-0.78, -0.56))
    p["clav_tilt"] = _u(rng, (-0.35, 0.10))
    p["clav_w"] = _u(rng, (0.022, 0.035))
    # Soft tissue: breast shadows (~half the patients), gastric bubble, humeral heads.
    p["breast"] = _u(rng, (0.10, 0.22)) if rng.random() < 0.5 else 0.0
    p["breast_y"] = _u(rng, (0.30, 0.50))
    p["bubble"] = (_u(rng, (0.25, 0.45)), _u(rng, (0.05, 0.11)), _u(rng, (0.03, 0.07)))
    p["humerus_y"] = _u(rng, (-0.80, -0.62))
    # Fingerprint: vessel trees (seeded) and a low-frequency lung texture.
    p["vessel_seed"] = int(rng.integers(2**31))
    n_waves = 8
    p["tex_k"] = rng.uniform(3.0, 9.0, n_waves) * np.exp(1j * rng.uniform(0, 2 * np.pi, n_waves))
    p["tex_phase"] = rng.uniform(0, 2 * np.pi, n_waves)
    p["tex_amp"] = _u(rng, (0.15, 0.25))
    # Stable marks.
    p["granuloma"] = (
        (int(rng.integers(2)), _u(rng, (-0.5, 0.5)), _u(rng, (-0.5, 0.4)), _u(rng, (0.03, 0.05)))
        if rng.random() < 0.80 else None
    )
    p["wires"] = _u(rng, (-0.45, -0.25)) if rng.random() < 0.06 else None
    # Chronic finding and where each acute finding shows when this patient has it.
    p["cardiomegaly"] = rng.random() < cfg["cardiomegaly_rate"]
    p["cardio_scale"] = _u(rng, (1.25, 1.40))
    p["inst"] = {
        "Pleural Effusion": dict(side=int(rng.integers(3)), height=_u(rng, (0.20, 0.45))),
        "Pneumothorax": dict(side=int(rng.integers(2)), depth=_u(rng, (0.15, 0.35))),
        "Atelectasis": dict(side=int(rng.integers(2)), y=_u(rng, (0.05, 0.30)), tilt=_u(rng, (-0.3, 0.3)),
                            length=_u(rng, (0.18, 0.32))),
        "Consolidation": dict(side=int(rng.integers(2)), lobe=int(rng.integers(2)), size=_u(rng, (0.16, 0.30))),
        "Pneumonia": dict(side=int(rng.integers(2)), x=_u(rng, (-0.45, 0.45)), y=_u(rng, (-0.45, 0.35)),
                          size=_u(rng, (0.08, 0.16))),
        "Edema": dict(spread=_u(rng, (0.18, 0.30))),
    }
    return p


def _n_scans(rng: np.random.Generator, cfg: dict, max_scans: int) -> int:
    w = np.asarray(cfg["scans_per_patient_weights"][:max_scans], dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum())) + 1


def _sample_findings(rng, p, n_scans, cfg, site_cfg) -> list[set[str]]:
    """Per scan, the set of positive finding names (never contains 'No Finding')."""
    weights = dict(cfg["acute_weights"])
    if p["cardiomegaly"]:
        for name in ("Edema", "Pleural Effusion"):
            weights[name] *= cfg["cardiac_comorbidity"]
    names = list(weights)
    w = np.array([weights[n] for n in names])
    rate = min(1.0, cfg["abnormal_rate"] * site_cfg["abnormal_scale"])
    out, prev = [], set()
    for _ in range(n_scans):
        acute = {f for f in sorted(prev) if rng.random() < cfg["persist_prob"]}  # sorted: set order varies with PYTHONHASHSEED
        if rng.random() < rate:
            k = int(rng.choice(3, p=np.asarray(cfg["n_acute_weights"]) / np.sum(cfg["n_acute_weights"]))) + 1
            acute |= set(rng.choice(names, size=k, replace=False, p=w / w.sum()).tolist())
        prev = acute
        out.append(acute | ({"Cardiomegaly"} if p["cardiomegaly"] else set()))
    return out


def _sample_scan(rng, cfg, site_cfg) -> dict:
    """Acquisition of one scan: pose, inspiration, exposure, collimation, severity draws."""
    s: dict = {}
    s["rot"] = np.deg2rad(np.clip(rng.normal(0, cfg["rotation_sd_deg"]), -2.5 * cfg["rotation_sd_deg"],
                                  2.5 * cfg["rotation_sd_deg"]))
    s["shift"] = rng.uniform(-cfg["shift_range"], cfg["shift_range"], 2)
    s["scale"] = _u(rng, cfg["scale_range"])
    s["insp"] = float(np.clip(rng.normal(0, cfg["inspiration_sd"]), -0.12, 0.12))
    s["win"] = (_u(rng, cfg["window_low"]), _u(rng, cfg["window_high"]))
    s["gamma"] = site_cfg["gamma"] * _u(rng, cfg["gamma_jitter"])
    s["bright"] = float(rng.normal(0, cfg["brightness_sd"]))
    s["noise"] = site_cfg["noise"] * _u(rng, cfg["noise_jitter"])
    s["tilt"] = rng.normal(0, 0.05, 2)  # heel effect / scatter gradient
    s["collimate"] = rng.random() < site_cfg["collimation_prob"]
    s["collim"] = rng.uniform(0.02, 0.14, 4)  # top, bottom, left, right (fraction of width)
    s["marker_jitter"] = rng.uniform(0.0, 0.06, 2)
    s["devices"] = rng.random() < site_cfg["devices_prob"]
    s["device_xy"] = rng.uniform(-0.6, 0.6, (3, 2))
    s["sev"] = rng.uniform(0.55, 1.0, len(_ACUTE))  # per acute finding, used if present
    s["jit"] = rng.normal(0, 0.03, (len(_ACUTE), 2))  # per-scan jitter of finding location
    s["patch_seed"] = int(rng.integers(2**31))
    return s


# --------------------------------------------------------------------------------------------
# Static anatomy on the anatomical grid (drawn once per patient, warped into every scan)
# --------------------------------------------------------------------------------------------


def _spine_u(p, v):
    return p["spine_amp"] * np.sin(np.pi * (v + 1.0) * 0.9 + p["spine_phase"])


def _bones(p, u, v):
    """Ribs, clavicles, spine, humeral heads, sternal wires, granuloma (added density)."""
    au = np.abs(u)
    thorax = _ramp(p["body_hw"] - 0.12 - au, 0.08) * _ramp(v + 0.78, 0.06) * _ramp(p["dome_y"] + 0.05 - v, 0.2)
    # Posterior ribs: bands that curve down laterally; anterior ribs: fainter, sloping medially.
    phase = (v - p["rib_curve"] * u**2 + 0.05 * au) / p["rib_spacing"] + p["rib_phase"]
    post = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 3 * _ramp(au - 0.10, 0.06)
    phase_a = (v + 0.45 * au) / (p["rib_spacing"] * 1.15) + p["rib_phase"] * 0.7
    ant = np.clip(np.cos(2 * np.pi * phase_a), 0, 1) ** 4 * _ramp(0.75 - au, 0.1) * _ramp(0.2 - v, 0.2)
    ribs = thorax * (0.12 * post + 0.05 * ant)
    # Clavicles: S-shaped bars from the sternal notch to the shoulders.
    vc = p["clav_y"] + p["clav_tilt"] * (au - 0.1) - 0.25 * (au - 0.4) ** 2
    clav = _ramp(p["clav_w"] - np.abs(v - vc), 0.02) * _ramp(au - 0.07, 0.03) * _ramp(0.72 - au, 0.05)
    # Spine: vertebral bodies (bright) separated by discs, pedicles as faint edges.
    su = u - _spine_u(p, v)
    vert = 0.65 + 0.35 * np.abs(np.cos(np.pi * v / p["vert_period"]))
    spine = _ramp(0.075 - np.abs(su), 0.03) * vert * _ramp(v + 1.2, 0.1)
    # Humeral heads at the upper corners.
    hum = sum(_ramp(0.22 - np.hypot(u - sgn * (p["body_hw"] + 0.08), v - p["humerus_y"]), 0.04) for sgn in (-1, 1))
    dens = ribs + 0.32 * clav + 0.22 * spine + 0.30 * hum
    if p["wires"] is not None:  # median sternotomy: a column of small bright loops
        for k in range(4):
            r = np.hypot((u - 0.0) / 0.035, (v - p["wires"] - 0.11 * k) / 0.022)
            dens = dens + 0.6 * _ramp(0.35 - np.abs(r - 1.0), 0.3)
    if p["granuloma"] is not None:
        side, gx, gy, gr = p["granuloma"]
        cx = (2 * side - 1) * p["lung_cx"][side] + gx * p["lung_ax"][side]
        dens = dens + 0.45 * _ramp(gr - np.hypot(u - cx, v - (p["lung_cy"] + gy * p["lung_ay"])), 0.012)
    return dens


def _soft_tissue(p, u, v):
    """Body outline (neck, shoulders, chest wall) and breast shadows; outside = air (0)."""
    t = np.clip((v + 0.95) / 0.35, 0, 1)
    hw = p["neck_hw"] + (p["body_hw"] + 0.15 - p["neck_hw"]) * t * t * (3 - 2 * t)
    body = _ramp(hw - np.abs(u), 0.05)
    tissue = body * (0.95 + 0.10 * np.clip(v, 0, 1))
    if p["breast"] > 0:
        for sgn in (-1, 1):
            r = np.hypot((u - sgn * 0.50) / 0.36, (v - p["breast_y"]) / 0.28)
            tissue = tissue + p["breast"] * _ramp(1.0 - r, 0.15) * _ramp(v - p["breast_y"] + 0.25, 0.2)
    return tissue


def _lung_detail(p, u, v, n):
    """Vessel trees from each hilum + low-frequency texture: the patient's fingerprint."""
    rng = np.random.default_rng(p["vessel_seed"])
    tex = np.zeros((v.shape[0], u.shape[1]))
    # Low-frequency texture: sum of plane waves cos(kx u + ky v + phase), separable as
    # cos(A) cos(B) - sin(A) sin(B) with A along u, B along v (outer products, no BLAS).
    k, ph = p["tex_k"], p["tex_phase"]
    for kk, pp in zip(k, ph):
        a, b = kk.real * u[0] + pp, kk.imag * v[:, 0]
        tex += np.multiply.outer(np.cos(b), np.cos(a)) - np.multiply.outer(np.sin(b), np.sin(a))
    tex *= p["tex_amp"] / np.sqrt(len(k))
    # Vessels: segments drawn on bounding boxes only (fast), max-composited.
    ves = np.zeros_like(tex)
    cell = 2 * _CANON / n
    for side in (0, 1):
        sgn = 2 * side - 1
        hx, hy = sgn * 0.17, p["lung_cy"] + 0.08
        for _ in range(int(rng.integers(9, 14))):
            ang = rng.uniform(-2.0, 2.0)  # 0 = straight lateral, ±2 rad = up/down
            d = np.array([sgn * np.cos(ang), np.sin(ang)])
            p0 = np.array([hx, hy]) + rng.normal(0, 0.02, 2)
            l1, l2 = rng.uniform(0.12, 0.25), rng.uniform(0.12, 0.28)
            p1 = p0 + l1 * d
            segs = [(p0, p1, 0.016)]
            for turn in (rng.uniform(-0.5, -0.15), rng.uniform(0.15, 0.5)):
                c, s_ = np.cos(turn), np.sin(turn)
                d2 = np.array([c * d[0] - s_ * d[1], s_ * d[0] + c * d[1]])
                segs.append((p1, p1 + l2 * d2 * rng.uniform(0.6, 1.0), 0.009))
            for a, b, w in segs:
                ax_, ay_, bx_, by_ = float(a[0]), float(a[1]), float(b[0]), float(b[1])
                pad = w + 2 * cell
                box = lambda lo, hi: (max(0, int((lo - pad + _CANON) / cell)),  # noqa: E731
                                      min(n, int((hi + pad + _CANON) / cell) + 1))
                i0, i1 = box(min(ay_, by_), max(ay_, by_))
                j0, j1 = box(min(ax_, bx_), max(ax_, bx_))
                if i1 <= i0 or j1 <= j0:
                    continue
                uu, vv = u[:, j0:j1] - ax_, v[i0:i1, :] - ay_
                abx, aby = bx_ - ax_, by_ - ay_
                t = np.minimum(np.maximum((uu * abx + vv * aby) / (abx * abx + aby * aby), 0.0), 1.0)
                dist = np.hypot(uu - t * abx, vv - t * aby)
                width = w * (1.0 - 0.4 * t)
                ves[i0:i1, j0:j1] = np.maximum(ves[i0:i1, j0:j1], _ramp(width - dist, cell))
    return tex + 0.20 * ves


# --------------------------------------------------------------------------------------------
# Per-scan analytic anatomy (lungs, domes, heart) and findings, batched over the scans
# --------------------------------------------------------------------------------------------


def _superellipse(u, v, cx, cy, ax, ay, e):
    return (np.abs(u - cx) / ax) ** e + (np.abs(v - cy) / ay) ** e


def _dome(p, u, side, insp):
    """Height (v) of the diaphragm under lung ``side``; larger v = lower on the image."""
    sgn = 2 * side - 1
    base = p["dome_y"] - (p["dome_asym"] if side == 0 else 0.0) - insp
    return base + p["dome_curv"] * (u - sgn * p["dome_peak"]) ** 2 * 0.6


def _render_scans(p, scans, findings, R, site_cfg, static, n_canon):
    """Density maps (S, R, R) for all scans of one patient."""
    S = len(scans)
    x, y = _grid(R, 1.0)
    col = lambda key: np.array([s[key] for s in scans], dtype=np.float64)[:, None, None]  # noqa: E731
    rot, scale, insp = col("rot"), col("scale"), col("insp")
    dx = np.array([s["shift"][0] for s in scans])[:, None, None]
    dy = np.array([s["shift"][1] for s in scans])[:, None, None]
    c, s_ = np.cos(rot), np.sin(rot)
    u = (c * (x - dx) + s_ * (y - dy)) / scale
    v = (-s_ * (x - dx) + c * (y - dy)) / scale

    # Warp the static layers (bilinear) into every scan.
    cell = 2 * _CANON / n_canon
    coords = np.stack([(v + _CANON) / cell - 0.5, (u + _CANON) / cell - 0.5]).reshape(2, -1)
    warp = {k: ndimage.map_coordinates(a, coords, order=1, mode="nearest").reshape(S, R, R)
            for k, a in static.items()}

    has = lambda name: np.array([name in f for f in findings], dtype=np.float64)[:, None, None]  # noqa: E731
    sev = lambda name: col_sev(name)  # noqa: E731

    def col_sev(name):
        i = _ACUTE.index(name)
        return np.array([sc["sev"][i] for sc in scans])[:, None, None] * has(name)

    def jit(name):
        i = _ACUTE.index(name)
        return (np.array([sc["jit"][i][0] for sc in scans])[:, None, None],
                np.array([sc["jit"][i][1] for sc in scans])[:, None, None])

    inst = p["inst"]
    # Volume loss from atelectasis raises the ipsilateral dome and pulls the mediastinum over.
    atel = sev("Atelectasis")
    atel_side = inst["Atelectasis"]["side"]
    med_pull = (2 * atel_side - 1) * 0.04 * atel

    # Heart: ellipse above the left dome; cardiomegaly widens it (CTR > 0.5); expiration and
    # AP magnification make it look bigger too.
    hscale = site_cfg["heart_magnification"] * (p["cardio_scale"] if p["cardiomegaly"] else 1.0)
    hx = p["heart_cx"] + med_pull + (0.05 if p["cardiomegaly"] else 0.0)
    hy = p["dome_y"] - insp - p["heart_up"]
    hax = p["heart_ax"] * hscale * (1.0 + 0.8 * insp)
    hay = p["heart_ay"] * (1.0 + 0.5 * (hscale - 1.0))
    cr, sr = np.cos(p["heart_rot"]), np.sin(p["heart_rot"])
    hu, hv = u - hx, v - hy
    heart_r = np.hypot((cr * hu + sr * hv) / hax, (-sr * hu + cr * hv) / hay)
    heart = _ramp(1.0 - heart_r, 0.06)
    # Mediastinum: a central column above the heart, aortic knob bulging to the image right.
    mu = u - p["med_shift"] - med_pull
    med = _ramp(p["med_w"] + 0.05 * np.clip(v + 0.2, 0, 1) - np.abs(mu), 0.04) * _ramp(hy - v + 0.05, 0.05)
    med = np.maximum(med, _ramp(p["knob_r"] - np.hypot(mu - p["med_w"] - 0.01, v - p["knob_y"]), 0.03))
    trachea = _ramp(0.035 - np.abs(mu + 0.01 * (v + 0.3)), 0.02) * _ramp(-0.28 - v, 0.04)

    # Lungs: superellipse cut by the dome, minus heart and mediastinum. "air" = how much of the
    # chest thickness is air (thicker centrally), so lungs get brighter toward the edges.
    air = np.zeros((S, R, R))
    lung_masks = []
    for side in (0, 1):
        sgn = 2 * side - 1
        # Narrow apex, wide base: the half-width grows downward.
        ax = p["lung_ax"][side] * (0.85 + 0.22 * np.clip((v - p["lung_cy"]) / p["lung_ay"], -1, 1))
        rr = _superellipse(u, v, sgn * p["lung_cx"][side], p["lung_cy"], ax, p["lung_ay"], p["lung_p"])
        dome = _dome(p, u, side, insp) - (0.07 * atel if side == atel_side else 0.0)
        m = _ramp(1.0 - rr, 0.08) * _ramp(dome - v, 0.03)
        lung_masks.append((m, rr, dome))
        air += m * (0.40 + 0.22 * np.clip(1.0 - rr, 0, 1) ** 0.5)
    air *= (1.0 - heart) * (1.0 - med)

    # Findings fill the air (opacity in [0, 1]) or add extra lucency.
    opacity = np.zeros((S, R, R))
    detail_keep = np.ones((S, R, R))
    extra = np.zeros((S, R, R))

    e = sev("Pleural Effusion")
    if e.any():  # basal fluid with a meniscus rising laterally; blunts the costophrenic angle
        sides = (0, 1) if inst["Pleural Effusion"]["side"] == 2 else (inst["Pleural Effusion"]["side"],)
        for side in sides:
            sgn = 2 * side - 1
            m, rr, dome = lung_masks[side]
            h = inst["Pleural Effusion"]["height"] * (0.6 + 0.4 * e)
            level = dome - h + 0.6 * h * (1 - np.clip((sgn * u - 0.15) / 0.55, 0, 1)) - 0.03
            fluid = _ramp(v - level, 0.06) * _ramp(0.35 + sgn * 0.9 * u, 0.1)
            opacity = np.maximum(opacity, fluid * np.clip(0.85 + 2.0 * (v - level), 0, 1) * (e > 0))
            extra += 0.08 * fluid * _ramp(v - dome + 0.1, 0.1) * (e > 0)

    t = sev("Pneumothorax")
    if t.any():  # collapsed lung: lucent rim with no markings, thin visceral pleural line
        side = inst["Pneumothorax"]["side"]
        m, rr, _ = lung_masks[side]
        sgn = 2 * side - 1
        depth = inst["Pneumothorax"]["depth"] * (0.5 + 0.5 * t)
        # Collapse is apical-lateral: weight the rim by position.
        medial = np.clip((p["lung_cx"][side] - sgn * u) / p["lung_ax"][side], 0, 1)
        lower = np.clip((v - p["lung_cy"]) / p["lung_ay"], 0, 1)
        rim = rr ** (1.0 / p["lung_p"]) * (1.0 - 0.5 * medial - 0.4 * lower)
        inside = _ramp(1.0 - depth - rim, 0.03)
        ptx = m * (1.0 - inside) * (t > 0)
        line = _ramp(0.012 - np.abs(rim - (1.0 - depth)), 0.01) * m * (t > 0)
        detail_keep *= 1.0 - ptx
        air += 0.18 * ptx
        extra += 0.25 * line

    a = atel
    if a.any():  # plate-like band opacity in the lower zone
        side = atel_side
        sgn = 2 * side - 1
        ai = inst["Atelectasis"]
        ju, jv = jit("Atelectasis")
        cx = sgn * p["lung_cx"][side] + ju
        cy = p["lung_cy"] + ai["y"] * p["lung_ay"] + jv
        ca, sa = np.cos(ai["tilt"]), np.sin(ai["tilt"])
        along = ca * (u - cx) + sa * (v - cy)
        across = -sa * (u - cx) + ca * (v - cy)
        band = _ramp(0.045 - np.abs(across), 0.03) * _ramp(ai["length"] / 2 - np.abs(along), 0.06)
        opacity = np.maximum(opacity, 0.7 * a * band)

    k = sev("Consolidation")
    if k.any():  # dense lobar opacity bounded by a fissure, fluffy elsewhere, air bronchograms
        side = inst["Consolidation"]["side"]
        sgn = 2 * side - 1
        m, rr, dome = lung_masks[side]
        ci = inst["Consolidation"]
        ju, jv = jit("Consolidation")
        if ci["lobe"] == 0:  # upper lobe: above a horizontal fissure
            cy = p["lung_cy"] - 0.3 * p["lung_ay"] + jv
            region = _ramp(p["lung_cy"] + 0.05 - v, 0.03)
        else:  # lower lobe: above the dome
            cy = p["dome_y"] - 0.22 + jv
            region = np.ones_like(v)
        cx = sgn * (p["lung_cx"][side] + 0.05) + ju
        wob = 1.0 + 0.15 * np.sin(7 * u + 3 * side) * np.sin(6 * v + 1)
        blob = _ramp(ci["size"] * (0.7 + 0.3 * k) * wob - np.hypot(u - cx, (v - cy) * 0.9), 0.08) * region
        bronch = np.clip(warp["detail"], 0, 0.2) * 2.5
        opacity = np.maximum(opacity, (0.85 * k) * blob * (1.0 - bronch))

    ed = sev("Edema")
    if ed.any():  # bilateral perihilar (bat-wing) haze + Kerley B lines at the bases
        spread = p["inst"]["Edema"]["spread"]
        haze = sum(np.exp(-(((u - sgn * 0.2) / (spread * 1.4)) ** 2 + ((v - p["lung_cy"] - 0.05) / spread) ** 2))
                   for sgn in (-1, 1))
        kerley = np.clip(np.cos(2 * np.pi * v / 0.045), 0, 1) ** 6 * _ramp(np.abs(u) - 0.5, 0.1) * _ramp(v - 0.1, 0.1)
        opacity = np.maximum(opacity, ed * (0.45 * haze + 0.25 * kerley))

    pn = sev("Pneumonia")
    if pn.any():  # patchy focal opacity: a cluster of small blotches, modulated by noise
        side = inst["Pneumonia"]["side"]
        sgn = 2 * side - 1
        pi_ = inst["Pneumonia"]
        ju, jv = jit("Pneumonia")
        cx = sgn * p["lung_cx"][side] + pi_["x"] * p["lung_ax"][side] + ju
        cy = p["lung_cy"] + pi_["y"] * p["lung_ay"] + jv
        prng = np.random.default_rng(p["vessel_seed"] + 1)
        offs = prng.normal(0, pi_["size"] * 0.6, (6, 2))
        patch = np.zeros((S, R, R))
        for ox, oy in offs:
            patch = np.maximum(patch, np.exp(-((u - cx - ox) ** 2 + (v - cy - oy) ** 2) / (2 * (pi_["size"] * 0.45) ** 2)))
        patch *= 0.75 + 0.25 * np.sin(23 * u + 2) * np.sin(19 * v + 1)
        opacity = np.maximum(opacity, 0.6 * pn * patch)

    opacity = np.clip(opacity, 0, 1)
    lung_any = np.clip(lung_masks[0][0] + lung_masks[1][0], 0, 1) * (1.0 - heart) * (1.0 - med)
    # Below the domes: abdomen (soft tissue) with the gastric bubble under the left dome.
    bx, by, br = p["bubble"]
    bub = _ramp(br - np.hypot((u - bx) / 1.6, v - (_dome(p, bx, 1, insp) + by)), 0.02)

    dens = (
            + 0.10 * heart + 0.06 * med
            - air * (1.0 - opacity)
            - 0.12 * trachea - 0.35 * bub
            + lung_any * (1.0 - opacity) * detail_keep * warp["detail"]
            + warp["base"] + extra)
    return np.clip(dens, 0, None)


def _expose(dens, scans, site_cfg, size, ss, rng_list):
    """Density → detector image: window + gamma (site LUT), blur, noise, collimation, marker."""
    S = len(scans)
    col = lambda f: np.array([f(s) for s in scans])[:, None, None]  # noqa: E731
    lo, hi = col(lambda s: s["win"][0]), col(lambda s: s["win"][1])
    img = np.clip((dens - lo) / (hi - lo), 0, 1)
    # Downsample (anti-aliasing) before the cheap per-pixel operations.
    img = img.reshape(S, size, ss, size, ss).mean(axis=(2, 4))
    img = img ** col(lambda s: s["gamma"])
    if site_cfg["lut_curve"]:  # S-shaped (>0 flattens, <0 steepens) LUT of the vendor
        c = site_cfg["lut_curve"]
        img = img + c * img * (1 - img) * (img - 0.5) * -4
    x, y = _grid(size, 1.0)
    img = img + col(lambda s: s["bright"]) + col(lambda s: s["tilt"][0]) * x + col(lambda s: s["tilt"][1]) * y
    if site_cfg["blur"] > 0:
        img = ndimage.gaussian_filter(img, sigma=(0, site_cfg["blur"] * size / 64, site_cfg["blur"] * size / 64))
    for i, s in enumerate(scans):
        r = rng_list[i]
        # Support devices (unlabelled confounders): ECG electrodes + a line.
        if s["devices"]:
            for ex, ey in s["device_xy"]:
                img[i] += 0.5 * _ramp(0.05 - np.hypot(x - ex, y - ey), 2.0 / size)
            img[i] += 0.35 * _ramp(0.012 + 1.0 / size - np.abs(x - 0.05 - 0.1 * np.sin(2 * y)), 1.5 / size) * (y < 0.2)
        # Quantum noise: larger where fewer photons reach (dark areas of the raw image are
        # bright on film, so scale by sqrt of brightness plus a floor).
        img[i] += s["noise"] * np.sqrt(np.clip(img[i], 0.05, 1)) * r.standard_normal((size, size))
        if s["collimate"]:
            t, b, l_, rt = s["collim"]
            inside = (y > -1 + 2 * t) & (y < 1 - 2 * b) & (x > -1 + 2 * l_) & (x < 1 - 2 * rt)
            img[i] = np.where(inside, img[i], site_cfg["collimation_value"] + 0.02 * r.standard_normal((size, size)))
        img[i] = _marker(img[i], site_cfg, s, x, y, size)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _marker(im, site_cfg, s, x, y, size):
    """Burned-in side marker of the site: an 'L', a box or a bar in the site's corner."""
    row, colm = site_cfg["marker_corner"]
    cy = (-0.82 if row == 0 else 0.82) + (s["marker_jitter"][1] if row == 0 else -s["marker_jitter"][1])
    cx = (-0.82 if colm == 0 else 0.82) + (s["marker_jitter"][0] if colm == 0 else -s["marker_jitter"][0])
    px = 1.0 / size
    kind = site_cfg["marker"]
    if kind == "L":
        m = (_ramp(0.03 + px - np.abs(x - cx + 0.04), px) * _ramp(0.09 + px - np.abs(y - cy), px)
             + _ramp(0.06 + px - np.abs(x - cx), px) * _ramp(0.03 + px - np.abs(y - cy - 0.06), px))
    elif kind == "box":
        m = _ramp(0.07 + px - np.maximum(np.abs(x - cx), np.abs(y - cy)), px) * (
            1 - 0.6 * _ramp(0.035 - np.maximum(np.abs(x - cx), np.abs(y - cy)), px))
    else:  # bar
        m = _ramp(0.10 + px - np.abs(x - cx), px) * _ramp(0.03 + px - np.abs(y - cy), px)
    return np.where(m > 0, (1 - np.clip(m, 0, 1)) * im + np.clip(m, 0, 1) * 0.97, im)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _supersample(image_size: int) -> int:
    return 2 if image_size <= 128 else 1


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
    ss = supersample or _supersample(image_size)
    R = image_size * ss
    n_canon = int(np.ceil(R * _CANON))
    cu, cv = _grid(n_canon, _CANON)

    images, labels, pids, names = [], [], [], []
    it = range(first_patient, first_patient + n_patients)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"PhantomCXR site {site}", unit="patient")
    for idx in it:
        rng = patient_rng(seed, site, idx)
        p = _sample_patient(rng, cfg)
        n = _n_scans(rng, cfg, max_scans)
        findings = _sample_findings(rng, p, n, cfg, site_cfg)
        scan_rngs = [np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(n)]
        scans = [_sample_scan(r, cfg, site_cfg) for r in scan_rngs]
        static = {"base": _bones(p, cu, cv) + _soft_tissue(p, cu, cv), "detail": _lung_detail(p, cu, cv, n_canon)}
        dens = _render_scans(p, scans, findings, R, site_cfg, static, n_canon)
        images.append(_expose(dens, scans, site_cfg, image_size, ss, scan_rngs))
        pid = f"{site}-p{idx:05d}"
        for j, f in enumerate(findings):
            lab = np.zeros(len(LABELS), dtype=np.uint8)
            for name in f:
                lab[LABELS.index(name)] = 1
            lab[0] = int(not f)
            labels.append(lab)
            pids.append(pid)
            names.append(f"{pid}/s{j:02d}")
    return ImageSet(
        images=np.concatenate(images),
        labels=np.stack(labels),
        patient_ids=np.array(pids),
        names=np.array(names),
    )
