"""Trichotomy: PSO-secure synthetic medical image release (Dombrowski & Kainz, 2025).

The library holds all computation; the notebooks in ``notebooks/`` call it and plot.
"""

__version__ = "0.1.0"
