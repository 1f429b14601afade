"""Pipeline stages, one module per part of the method; importing this registers them all.

Order follows the method (DESIGN.md): data → verifiers, classifier → encoder → diffusion →
releases → privacy evaluation → utility, fidelity and the guidance sweep. A stage module holds
its stage functions and the loaders of their artifacts, nothing else; what a notebook shows
is built from those artifacts in ``trichotomy_lib.analysis``.
"""

from .. import checks  # noqa: F401  (registers the `checks` section)
from . import data, populations, reid, classifier, encoder, diffusion, generate, privacy, utility, fidelity, sweep  # noqa: F401


def reproduction_stages(cfg: dict) -> list[str]:
    """The stages the numbered notebooks read under ``cfg`` (a resolved config): every stage of
    this package but the utility and fidelity rows of releases outside ``utility.releases``.

    ``trichotomy reproduce`` computes them side by side before the notebooks run
    (``schedule.compute_stages``); a stage missing here is still computed by the notebook that
    asks for it, only not side by side."""
    from ..pipeline import STAGES
    from ..releases import RELEASES

    rows = set(cfg["utility"]["releases"])
    skipped = {f"{kind}_{name}" for name in RELEASES if name not in rows for kind in ("utility", "fidelity")}
    return [name for name, st in STAGES.items() if st.fn.__module__.startswith(f"{__name__}.") and name not in skipped]
