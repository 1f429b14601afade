"""Pipeline stages, one module per part of the method; importing this registers them all.

Order follows the method (DESIGN.md): data → verifiers, classifier → encoder → diffusion →
releases → privacy evaluation → utility, fidelity and the guidance sweep.
"""

from . import data, reid, classifier, encoder, diffusion, generate, privacy, utility  # noqa: F401
