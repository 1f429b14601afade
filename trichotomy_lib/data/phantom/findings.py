"""How each of the seven findings changes a chest radiograph.

Two findings change the anatomy itself, before the lungs are drawn: cardiomegaly enlarges the
heart (``cardiomegaly``) and atelectasis loses lung volume (``atelectasis_volume_loss``). Every
acute finding then draws into the lung fields through ``FINDINGS``: name → ``draw(patient,
chest, severity, jitter, layers)``, which updates ``layers`` in place:

* ``opacity`` (0..1): how much of the lung's air is replaced by fluid or tissue (max-composited,
  so overlapping findings do not add up beyond "airless");
* ``marking_keep`` (0..1): how much of the lung markings (vessels, texture) stays visible;
* ``air``: fraction of the chest thickness that is air (a pneumothorax adds some);
* ``added_density``: thin bright structures (pleural line, fluid meniscus).

``severity`` is an (S, 1, 1) array, 0.55..1 on scans that have the finding and 0 elsewhere;
``jitter`` is the per-scan (u, v) shift of focal findings, each (S, 1, 1). A patient's
finding keeps its side and location (``patient["finding_geometry"]``) across scans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .anatomy import ChestAnatomy
from .geometry import soft_step


@dataclass
class FindingLayers:
    """What the findings draw, all (S, R, R); see the module docstring."""

    air: np.ndarray
    opacity: np.ndarray
    marking_keep: np.ndarray
    added_density: np.ndarray


def cardiomegaly(patient: dict) -> tuple[float, float]:
    """Cardiomegaly (chronic): the heart is 1.25-1.40x wider and 0.05 further to the patient's left.

    On a frontal film this shows as a cardiothoracic ratio above 0.5 and a heart border pushed
    toward the left chest wall. Returns (width factor, lateral shift in u).
    """
    if patient["cardiomegaly"]:
        return patient["cardiomegaly_scale"], 0.05
    return 1.0, 0.0


def atelectasis_volume_loss(patient: dict, severity) -> tuple[np.ndarray, tuple]:
    """Atelectasis, anatomical part: the collapsed side loses volume.

    Volume loss pulls the mediastinum (and heart) toward the collapsed side and raises that
    hemidiaphragm. Returns (mediastinal shift in u, (dome lift of side 0, of side 1)).
    """
    side = patient["finding_geometry"]["Atelectasis"]["side"]
    mediastinal_shift = (2 * side - 1) * 0.04 * severity
    dome_lift = tuple(0.07 * severity if s == side else 0.0 for s in (0, 1))
    return mediastinal_shift, dome_lift


def draw_atelectasis(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Plate-like (discoid) atelectasis: a thin, slightly tilted band of opacity in the lower zone.

    A collapsed subsegment is airless tissue seen edge-on, hence a linear band rather than a
    blob; it sits above the (raised) dome of the same side.
    """
    geometry = patient["finding_geometry"]["Atelectasis"]
    side = geometry["side"]
    sgn = 2 * side - 1
    jitter_u, jitter_v = jitter
    u, v = chest.u, chest.v
    centre_u = sgn * patient["lung_cx"][side] + jitter_u
    centre_v = patient["lung_cy"] + geometry["y"] * patient["lung_ay"] + jitter_v
    cos, sin = np.cos(geometry["tilt"]), np.sin(geometry["tilt"])
    along = cos * (u - centre_u) + sin * (v - centre_v)
    across = -sin * (u - centre_u) + cos * (v - centre_v)
    band = soft_step(0.075 - np.abs(across), 0.03) * soft_step(geometry["length"] / 2 - np.abs(along), 0.06)
    layers.opacity = np.maximum(layers.opacity, 0.9 * severity * band)


def draw_consolidation(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Lobar consolidation: a dense opacity filling part of a lobe, with air bronchograms.

    Alveoli full of exudate are as dense as soft tissue. The upper-lobe form stops sharply at
    the horizontal fissure; elsewhere the border is fluffy. Airways stay aerated inside the
    opacity, so the bright vessel markings are cut out of it (dark branching air bronchograms).
    """
    geometry = patient["finding_geometry"]["Consolidation"]
    side = geometry["side"]
    sgn = 2 * side - 1
    jitter_u, jitter_v = jitter
    u, v = chest.u, chest.v
    if geometry["lobe"] == 0:  # upper lobe: above a horizontal fissure
        centre_v = patient["lung_cy"] - 0.3 * patient["lung_ay"] + jitter_v
        region = soft_step(patient["lung_cy"] + 0.05 - v, 0.03)
    else:  # lower lobe: above the dome
        centre_v = patient["dome_y"] - 0.22 + jitter_v
        region = np.ones_like(v)
    centre_u = sgn * (patient["lung_cx"][side] + 0.05) + jitter_u
    wobble = 1.0 + 0.15 * np.sin(7 * u + 3 * side) * np.sin(6 * v + 1)  # irregular outline
    radius = geometry["size"] * (0.7 + 0.3 * severity) * wobble
    blob = soft_step(radius - np.hypot(u - centre_u, (v - centre_v) * 0.9), 0.08) * region
    bronchograms = np.clip(chest.detail, 0, 0.2) * 2.5
    layers.opacity = np.maximum(layers.opacity, (0.85 * severity) * blob * (1.0 - bronchograms))


def draw_edema(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Pulmonary edema: bilateral perihilar ("bat-wing") haze and Kerley B lines at the bases.

    Interstitial and alveolar fluid gathers around the hila first, fading toward the
    periphery; fluid in the interlobular septa shows as short horizontal lines at the
    lateral lung bases.
    """
    spread = patient["finding_geometry"]["Edema"]["spread"]
    u, v = chest.u, chest.v
    haze = sum(np.exp(-(((u - sgn * 0.2) / (spread * 1.4)) ** 2 + ((v - patient["lung_cy"] - 0.05) / spread) ** 2))
               for sgn in (-1, 1))
    kerley_lines = (np.clip(np.cos(2 * np.pi * v / 0.045), 0, 1) ** 6 * soft_step(np.abs(u) - 0.5, 0.1)
                    * soft_step(v - 0.1, 0.1))
    layers.opacity = np.maximum(layers.opacity, severity * (0.45 * haze + 0.25 * kerley_lines))


def draw_pleural_effusion(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Pleural effusion: basal fluid with a meniscus rising laterally, one side or both.

    Free fluid settles at the base and climbs the lateral chest wall, so its upper border is
    concave (the meniscus sign) and the costophrenic angle is blunted; the fluid gets denser
    with depth. The level rises with severity (``height`` x 0.6..1 above the dome).
    """
    geometry = patient["finding_geometry"]["Pleural Effusion"]
    u, v = chest.u, chest.v
    present = severity > 0
    sides = (0, 1) if geometry["side"] == 2 else (geometry["side"],)
    for side in sides:
        sgn = 2 * side - 1
        dome = chest.lungs[side].dome
        height = geometry["height"] * (0.6 + 0.4 * severity)
        # The level is lowest medially and rises by 0.6 x height toward the chest wall.
        level = dome - height + 0.6 * height * (1 - np.clip((sgn * u - 0.15) / 0.55, 0, 1)) - 0.03
        fluid = soft_step(v - level, 0.06) * soft_step(0.35 + sgn * 0.9 * u, 0.1)
        layers.opacity = np.maximum(layers.opacity, fluid * np.clip(0.85 + 2.0 * (v - level), 0, 1) * present)
        layers.added_density += 0.08 * fluid * soft_step(v - dome + 0.1, 0.1) * present


def draw_pneumonia(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Pneumonia (bronchopneumonia): a patchy focal opacity, a cluster of small blotches.

    Infection spreads from the airways into neighbouring lobules, giving ill-defined,
    confluent patches rather than one lobe-shaped opacity. The cluster's layout is the
    patient's own (seeded), so recurrent pneumonia looks alike.
    """
    geometry = patient["finding_geometry"]["Pneumonia"]
    side = geometry["side"]
    sgn = 2 * side - 1
    jitter_u, jitter_v = jitter
    u, v = chest.u, chest.v
    centre_u = sgn * patient["lung_cx"][side] + geometry["x"] * patient["lung_ax"][side] + jitter_u
    centre_v = patient["lung_cy"] + geometry["y"] * patient["lung_ay"] + jitter_v
    blotch_rng = np.random.default_rng(patient["vessel_seed"] + 1)
    offsets = blotch_rng.normal(0, geometry["size"] * 0.6, (6, 2))
    patch = np.zeros(u.shape)
    for offset_u, offset_v in offsets:
        blotch = np.exp(-((u - centre_u - offset_u) ** 2 + (v - centre_v - offset_v) ** 2)
                        / (2 * (geometry["size"] * 0.6) ** 2))
        patch = np.maximum(patch, blotch)
    patch *= 0.75 + 0.25 * np.sin(23 * u + 2) * np.sin(19 * v + 1)  # mottling
    layers.opacity = np.maximum(layers.opacity, 0.95 * severity * patch)


def draw_pneumothorax(patient: dict, chest: ChestAnatomy, severity, jitter, layers: FindingLayers) -> None:
    """Pneumothorax: the lung collapses away from the chest wall.

    Air in the pleural space gives an apical-lateral rim that is darker than the lung and has
    no lung markings, bounded by a thin bright visceral pleural line. The rim is widest at
    the apex and laterally, thinning medially and toward the base; it deepens with severity.
    """
    geometry = patient["finding_geometry"]["Pneumothorax"]
    side = geometry["side"]
    sgn = 2 * side - 1
    lung = chest.lungs[side]
    u, v = chest.u, chest.v
    present = severity > 0
    depth = geometry["depth"] * (0.5 + 0.5 * severity)
    medial = np.clip((patient["lung_cx"][side] - sgn * u) / patient["lung_ax"][side], 0, 1)
    lower = np.clip((v - patient["lung_cy"]) / patient["lung_ay"], 0, 1)
    # Distance from the lung centre (1 on the outline), shrunk medially and basally.
    rim = lung.radius ** (1.0 / patient["lung_exponent"]) * (1.0 - 0.5 * medial - 0.4 * lower)
    collapsed_lung = soft_step(1.0 - depth - rim, 0.03)
    pleural_air = lung.mask * (1.0 - collapsed_lung) * present
    pleural_line = soft_step(0.012 - np.abs(rim - (1.0 - depth)), 0.01) * lung.mask * present
    layers.marking_keep *= 1.0 - pleural_air
    layers.air += 0.3 * pleural_air
    layers.added_density += 0.25 * pleural_line


# Acute findings drawn into the lung fields, in drawing order. Order matters only for
# ``added_density`` (a sum): effusion before pneumothorax.
FINDINGS: dict[str, Callable[..., None]] = {
    "Atelectasis": draw_atelectasis,
    "Consolidation": draw_consolidation,
    "Edema": draw_edema,
    "Pleural Effusion": draw_pleural_effusion,
    "Pneumonia": draw_pneumonia,
    "Pneumothorax": draw_pneumothorax,
}
