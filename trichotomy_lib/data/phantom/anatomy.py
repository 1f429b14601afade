"""A patient's anatomy as density maps, in the patient's anatomical frame (u, v).

Densities are in "soft tissue units": 1 = a full-thickness chest of soft tissue; lungs remove
up to ~0.75 of it (air), bones add 0.1-0.35. Bright = dense, as on a radiograph.

Two kinds of anatomy:
  * static (bones, soft tissue, the vessel fingerprint): drawn once per patient on the
    anatomical grid and warped into every scan (``static_layers``);
  * inspiration-dependent (diaphragm domes, lungs, heart, mediastinum): evaluated analytically
    on every scan's (u, v), batched over the scans (``ChestAnatomy``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import ANATOMY_HALF_WIDTH, soft_step

# --------------------------------------------------------------------------------------------
# Static anatomy (anatomical grid, once per patient)
# --------------------------------------------------------------------------------------------


def spine_offset(patient: dict, v):
    """Lateral offset (u) of the spine's axis at height ``v``: a gentle (scoliotic) S-curve."""
    return patient["spine_amplitude"] * np.sin(np.pi * (v + 1.0) * 0.9 + patient["spine_phase"])


def ribs(patient: dict, u, v):
    """Posterior ribs (bands curving down laterally) and fainter anterior ribs (sloping medially).

    Both are periodic in v; they only show inside the thorax, above the domes.
    """
    abs_u = np.abs(u)
    thorax = (soft_step(patient["body_hw"] - 0.12 - abs_u, 0.08) * soft_step(v + 0.78, 0.06)
              * soft_step(patient["dome_y"] + 0.05 - v, 0.2))
    phase = (v - patient["rib_curve"] * u**2 + 0.05 * abs_u) / patient["rib_spacing"] + patient["rib_phase"]
    posterior = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 3 * soft_step(abs_u - 0.10, 0.06)
    phase_anterior = (v + 0.45 * abs_u) / (patient["rib_spacing"] * 1.15) + patient["rib_phase"] * 0.7
    anterior = (np.clip(np.cos(2 * np.pi * phase_anterior), 0, 1) ** 4 * soft_step(0.75 - abs_u, 0.1)
                * soft_step(0.2 - v, 0.2))
    return thorax * (0.12 * posterior + 0.05 * anterior)


def clavicles(patient: dict, u, v):
    """S-shaped bars from the sternal notch out to the shoulders (mask, 0..1)."""
    abs_u = np.abs(u)
    centre_v = patient["clavicle_y"] + patient["clavicle_tilt"] * (abs_u - 0.1) - 0.25 * (abs_u - 0.4) ** 2
    return (soft_step(patient["clavicle_hw"] - np.abs(v - centre_v), 0.02) * soft_step(abs_u - 0.07, 0.03)
            * soft_step(0.72 - abs_u, 0.05))


def spine(patient: dict, u, v):
    """Vertebral column: bright vertebral bodies separated by darker discs (mask, 0..1)."""
    across = u - spine_offset(patient, v)
    vertebrae = 0.65 + 0.35 * np.abs(np.cos(np.pi * v / patient["vertebra_period"]))
    return soft_step(0.075 - np.abs(across), 0.03) * vertebrae * soft_step(v + 1.2, 0.1)


def humeral_heads(patient: dict, u, v):
    """The two humeral heads in the upper corners, just outside the chest wall (mask, 0..2)."""
    return sum(soft_step(0.22 - np.hypot(u - sgn * (patient["body_hw"] + 0.08), v - patient["humerus_y"]), 0.04)
               for sgn in (-1, 1))


def bones(patient: dict, u, v):
    """Added density of ribs, clavicles, spine, humeral heads, sternal wires and granuloma."""
    density = ribs(patient, u, v) + 0.32 * clavicles(patient, u, v) + 0.22 * spine(patient, u, v) \
        + 0.30 * humeral_heads(patient, u, v)
    if patient["sternal_wires_y"] is not None:  # median sternotomy: a column of small bright loops
        for k in range(4):
            r = np.hypot((u - 0.0) / 0.035, (v - patient["sternal_wires_y"] - 0.11 * k) / 0.022)
            density = density + 0.6 * soft_step(0.35 - np.abs(r - 1.0), 0.3)
    if patient["granuloma"] is not None:  # a small, very dense calcified nodule in one lung
        side, gu, gv, radius = patient["granuloma"]
        centre_u = (2 * side - 1) * patient["lung_cx"][side] + gu * patient["lung_ax"][side]
        centre_v = patient["lung_cy"] + gv * patient["lung_ay"]
        density = density + 0.45 * soft_step(radius - np.hypot(u - centre_u, v - centre_v), 0.012)
    return density


def soft_tissue(patient: dict, u, v):
    """Body outline (neck widening into shoulders and chest wall) and breast shadows; outside = air (0)."""
    t = np.clip((v + 0.95) / 0.35, 0, 1)  # 0 at the neck, 1 below the shoulders (smoothstep)
    half_width = patient["neck_hw"] + (patient["body_hw"] + 0.15 - patient["neck_hw"]) * t * t * (3 - 2 * t)
    body = soft_step(half_width - np.abs(u), 0.05)
    tissue = body * (0.95 + 0.10 * np.clip(v, 0, 1))  # the abdomen is a little thicker
    if patient["breast_density"] > 0:
        for sgn in (-1, 1):
            r = np.hypot((u - sgn * 0.50) / 0.36, (v - patient["breast_y"]) / 0.28)
            tissue = tissue + (patient["breast_density"] * soft_step(1.0 - r, 0.15)
                               * soft_step(v - patient["breast_y"] + 0.25, 0.2))
    return tissue


def lung_texture(patient: dict, u, v):
    """Low-frequency texture: a sum of plane waves cos(k_u u + k_v v + phase) (grid u row, v column).

    Written separably as cos(A) cos(B) - sin(A) sin(B), A along u and B along v (outer
    products, no BLAS).
    """
    texture = np.zeros((v.shape[0], u.shape[1]))
    wavevectors, phases = patient["texture_wavevectors"], patient["texture_phases"]
    for k, phase in zip(wavevectors, phases):
        along_u, along_v = k.real * u[0] + phase, k.imag * v[:, 0]
        texture += (np.multiply.outer(np.cos(along_v), np.cos(along_u))
                    - np.multiply.outer(np.sin(along_v), np.sin(along_u)))
    texture *= patient["texture_amplitude"] / np.sqrt(len(wavevectors))
    return texture


def vessel_trees(patient: dict, u, v, n_grid: int):
    """Pulmonary vessels: from each hilum 9-13 branches that fork once, tapering (mask, 0..1).

    Each segment is drawn only on its bounding box (fast) and max-composited.
    """
    rng = np.random.default_rng(patient["vessel_seed"])
    vessels = np.zeros((v.shape[0], u.shape[1]))
    cell = 2 * ANATOMY_HALF_WIDTH / n_grid

    def pixel_range(low, high, pad):
        return (max(0, int((low - pad + ANATOMY_HALF_WIDTH) / cell)),
                min(n_grid, int((high + pad + ANATOMY_HALF_WIDTH) / cell) + 1))

    for side in (0, 1):
        sgn = 2 * side - 1
        hilum_u, hilum_v = sgn * 0.17, patient["lung_cy"] + 0.08
        for _ in range(int(rng.integers(9, 14))):
            angle = rng.uniform(-2.0, 2.0)  # 0 = straight lateral, ±2 rad = up/down
            direction = np.array([sgn * np.cos(angle), np.sin(angle)])
            start = np.array([hilum_u, hilum_v]) + rng.normal(0, 0.02, 2)
            trunk_length, branch_length = rng.uniform(0.12, 0.25), rng.uniform(0.12, 0.28)
            fork = start + trunk_length * direction
            segments = [(start, fork, 0.016)]
            for turn in (rng.uniform(-0.5, -0.15), rng.uniform(0.15, 0.5)):
                cos, sin = np.cos(turn), np.sin(turn)
                branch = np.array([cos * direction[0] - sin * direction[1], sin * direction[0] + cos * direction[1]])
                segments.append((fork, fork + branch_length * branch * rng.uniform(0.6, 1.0), 0.009))
            for a, b, width in segments:
                au, av, bu, bv = float(a[0]), float(a[1]), float(b[0]), float(b[1])
                pad = width + 2 * cell
                i0, i1 = pixel_range(min(av, bv), max(av, bv), pad)
                j0, j1 = pixel_range(min(au, bu), max(au, bu), pad)
                if i1 <= i0 or j1 <= j0:
                    continue
                du, dv = u[:, j0:j1] - au, v[i0:i1, :] - av
                abu, abv = bu - au, bv - av
                t = np.minimum(np.maximum((du * abu + dv * abv) / (abu * abu + abv * abv), 0.0), 1.0)
                distance = np.hypot(du - t * abu, dv - t * abv)
                tapered = width * (1.0 - 0.4 * t)
                vessels[i0:i1, j0:j1] = np.maximum(vessels[i0:i1, j0:j1], soft_step(tapered - distance, cell))
    return vessels


def vessel_fingerprint(patient: dict, u, v, n_grid: int):
    """The patient's lung markings (texture + vessel trees): what identifies a patient across scans."""
    return lung_texture(patient, u, v) + 0.20 * vessel_trees(patient, u, v, n_grid)


def static_layers(patient: dict, u, v, n_grid: int) -> dict:
    """The patient's static layers on the anatomical grid.

    Returns:
        ``base``: bones + soft tissue (added everywhere); ``detail``: the vessel fingerprint
        (shown only where there is aerated lung).
    """
    return {"base": bones(patient, u, v) + soft_tissue(patient, u, v),
            "detail": vessel_fingerprint(patient, u, v, n_grid)}


# --------------------------------------------------------------------------------------------
# Inspiration-dependent anatomy (every scan's (u, v), batched over scans)
# --------------------------------------------------------------------------------------------


def superellipse(u, v, cu, cv, au, av, exponent):
    """|u - cu|^e / au^e + |v - cv|^e / av^e: < 1 inside, 1 on the outline."""
    return (np.abs(u - cu) / au) ** exponent + (np.abs(v - cv) / av) ** exponent


def dome_height(patient: dict, u, side: int, inspiration):
    """Height (v) of the diaphragm under lung ``side``; larger v = lower on the image.

    A parabola peaking at ``dome_peak`` from the midline; the right dome (side 0) sits higher,
    and expiration (``inspiration`` > 0) raises both.
    """
    sgn = 2 * side - 1
    base = patient["dome_y"] - (patient["dome_asym"] if side == 0 else 0.0) - inspiration
    return base + patient["dome_curvature"] * (u - sgn * patient["dome_peak"]) ** 2 * 0.6


@dataclass
class Lung:
    mask: np.ndarray  # (S, R, R) 0..1, the aerated field above its dome
    radius: np.ndarray  # superellipse value: < 1 inside, grows outward
    dome: np.ndarray  # v of the diaphragm under this lung


@dataclass
class ChestAnatomy:
    """Per-scan analytic anatomy of one patient; every array is (S, R, R)."""

    u: np.ndarray
    v: np.ndarray
    heart: np.ndarray  # mask 0..1
    mediastinum: np.ndarray  # mask 0..1 (includes the aortic knob)
    trachea: np.ndarray  # mask 0..1
    lungs: tuple[Lung, Lung]  # side 0 (patient right), side 1 (patient left)
    air: np.ndarray  # fraction of the chest thickness that is air (0..~0.62)
    detail: np.ndarray  # the warped vessel fingerprint


def heart_mask(patient: dict, u, v, inspiration, heart_scale, mediastinal_shift, enlargement_shift):
    """Heart: a rotated ellipse above the left dome. Returns (mask, v of its centre).

    ``heart_scale`` (>= 1) widens it (cardiomegaly, AP magnification) and, by half as much,
    heightens it; expiration (``inspiration`` > 0) makes it look wider too. The heart moves
    laterally with the mediastinum (``mediastinal_shift``) and by ``enlargement_shift``.
    """
    centre_u = patient["heart_cx"] + mediastinal_shift + enlargement_shift
    centre_v = patient["dome_y"] - inspiration - patient["heart_up"]
    half_u = patient["heart_ax"] * heart_scale * (1.0 + 0.8 * inspiration)
    half_v = patient["heart_ay"] * (1.0 + 0.5 * (heart_scale - 1.0))
    cos, sin = np.cos(patient["heart_rotation"]), np.sin(patient["heart_rotation"])
    du, dv = u - centre_u, v - centre_v
    radius = np.hypot((cos * du + sin * dv) / half_u, (-sin * du + cos * dv) / half_v)
    return soft_step(1.0 - radius, 0.06), centre_v


def mediastinum_and_trachea(patient: dict, u, v, heart_centre_v, mediastinal_shift):
    """Mediastinum and trachea masks, both shifted laterally by ``mediastinal_shift``.

    The mediastinum is a central column widening downward to the heart's centre, with the
    aortic knob bulging to the image right; the trachea is an air column in it above v = -0.28.
    Returns (mediastinum, trachea).
    """
    mu = u - patient["mediastinum_shift"] - mediastinal_shift
    hw = patient["mediastinum_hw"]
    column = (soft_step(hw + 0.05 * np.clip(v + 0.2, 0, 1) - np.abs(mu), 0.04)
              * soft_step(heart_centre_v - v + 0.05, 0.05))
    knob = soft_step(patient["aortic_knob_r"] - np.hypot(mu - hw - 0.01, v - patient["aortic_knob_y"]), 0.03)
    trachea = soft_step(0.035 - np.abs(mu + 0.01 * (v + 0.3)), 0.02) * soft_step(-0.28 - v, 0.04)
    return np.maximum(column, knob), trachea


def lung_fields(patient: dict, u, v, inspiration, dome_lift):
    """Both lungs: superellipses (narrow apex, wide base) cut by their domes.

    ``dome_lift[side]`` raises a dome (volume loss). Returns the two ``Lung``s and the air
    fraction, which is larger centrally (thicker lung), so the lungs look darker there.
    """
    air = np.zeros(u.shape)
    lungs = []
    for side in (0, 1):
        sgn = 2 * side - 1
        # The half-width grows downward: narrow apex, wide base.
        height = np.clip((v - patient["lung_cy"]) / patient["lung_ay"], -1, 1)  # -1 apex .. 1 base
        half_u = patient["lung_ax"][side] * (0.85 + 0.22 * height)
        radius = superellipse(u, v, sgn * patient["lung_cx"][side], patient["lung_cy"], half_u, patient["lung_ay"],
                              patient["lung_exponent"])
        dome = dome_height(patient, u, side, inspiration) - dome_lift[side]
        mask = soft_step(1.0 - radius, 0.08) * soft_step(dome - v, 0.03)
        lungs.append(Lung(mask, radius, dome))
        air += mask * (0.40 + 0.22 * np.clip(1.0 - radius, 0, 1) ** 0.5)
    return tuple(lungs), air


def gastric_bubble(patient: dict, u, v, inspiration):
    """The air bubble of the stomach under the left dome (mask, 0..1)."""
    bubble_u, depth, radius = patient["gastric_bubble"]
    top = dome_height(patient, bubble_u, 1, inspiration) + depth
    return soft_step(radius - np.hypot((u - bubble_u) / 1.6, v - top), 0.02)


def chest_anatomy(patient: dict, u, v, inspiration, detail, heart_scale, enlargement_shift, mediastinal_shift,
                  dome_lift) -> ChestAnatomy:
    """Heart, mediastinum, trachea and lungs of every scan (see ``heart_mask``, ``lung_fields``).

    The air in the lungs is hidden where the heart and mediastinum lie in front of them.
    """
    heart, heart_centre_v = heart_mask(patient, u, v, inspiration, heart_scale, mediastinal_shift, enlargement_shift)
    mediastinum, trachea = mediastinum_and_trachea(patient, u, v, heart_centre_v, mediastinal_shift)
    lungs, air = lung_fields(patient, u, v, inspiration, dome_lift)
    air *= (1.0 - heart) * (1.0 - mediastinum)
    return ChestAnatomy(u=u, v=v, heart=heart, mediastinum=mediastinum, trachea=trachea, lungs=lungs, air=air,
                        detail=detail)
