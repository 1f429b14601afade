"""The two lines every notebook starts with, after its parameters cell."""

from __future__ import annotations

from . import config
from .pipeline import Pipeline


def setup(namespace: dict) -> tuple[dict, Pipeline]:
    """Resolve the notebook's config from its parameters and open the pipeline for it.

    ``cfg, pipe = notebook.setup(globals())``: the profile named by ``profile`` with every
    parameter the notebook set (not None) on top; plots get one consistent style.
    """
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "image.cmap": "gray", "axes.titlesize": 10})
    try:
        import seaborn

        seaborn.set_theme(context="notebook", style="ticks", rc={"image.cmap": "gray"})
    except ImportError:  # seaborn is a dependency; plots still work without its theme
        pass
    cfg = config.from_notebook(namespace)
    return cfg, Pipeline(cfg)
