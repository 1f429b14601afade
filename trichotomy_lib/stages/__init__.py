"""Pipeline stages, one module per part of the method; importing this registers them all.

Order follows the method (DESIGN.md): data → verifiers, classifier → encoder → diffusion →
releases → privacy evaluation → utility, fidelity and the guidance sweep. A stage module holds
its stage functions and the loaders of their artifacts, nothing else; what a notebook shows
is built from those artifacts in ``trichotomy_lib.analysis``.
"""

from .. import checks  # noqa: F401  (registers the `checks` section)
from . import data, populations, reid, classifier, encoder, diffusion, generate, privacy, utility, fidelity, sweep  # noqa: F401
