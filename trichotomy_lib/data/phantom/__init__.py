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

Modules: ``params`` (knobs, sites, the patient and scan draws), ``geometry`` (frames, soft masks),
``anatomy`` (static and per-scan anatomy), ``findings`` (one function per finding, ``FINDINGS``),
``acquisition`` (exposure, LUT, blur, noise, collimation, marker), ``render`` (the scan renderer
and ``generate_phantom``).
"""

from .params import PHANTOM_DEFAULTS, SITES, patient_rng
from .render import generate_phantom

__all__ = ["PHANTOM_DEFAULTS", "SITES", "generate_phantom", "patient_rng"]
