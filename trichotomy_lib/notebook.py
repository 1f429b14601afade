"""The two lines every notebook starts with, after its parameters cell."""

from __future__ import annotations

from . import config, stages  # noqa: F401  (registers every stage and config section)
from .pipeline import Pipeline
from .plotting import set_style


def setup(namespace: dict) -> tuple[dict, Pipeline]:
    """Resolve the notebook's config from its parameters and open the pipeline for it.

    ``cfg, pipe = notebook.setup(globals())``: the profile named by ``profile`` with every
    parameter the notebook set (not None) on top, validated and completed with every default
    (``pipe.cfg``); plots get one consistent style.
    """
    set_style()
    pipe = Pipeline(config.from_notebook(namespace))
    return pipe.cfg, pipe
