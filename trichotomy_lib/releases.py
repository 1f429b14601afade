"""The release registry: every set of images the project evaluates, in the paper's order.

The paper code's four generation modes are the two conditionings (class labels, DiADM
embeddings) × two guides (classifier-free: the network's own unconditional mode; autoguidance:
an early checkpoint of the same network), each drawn from the same per-sample seeds.

A *release* is one synthetic image per source (a real training image), labelled with the
source's labels (DESIGN step 6); the filter's larger releases keep up to ``survivors`` distinct
survivors per source, best first. The two *controls* are not generated: the positive control
is the training images themselves (lightly noised: a release that copies must score a high
risk) and the negative control is real images of patients never trained on (risk ≈ 0).

Every module that names a release (stages, evaluation, tables, the README) reads its stage
and display label here, so a label is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Release", "RELEASES", "CONTROLS", "GENERATED", "FILTERED", "REAL", "label", "release_stage", "release_stages"]


@dataclass(frozen=True)
class Release:
    name: str    # row name in every table and artifact ("diadm_filter")
    stage: str   # pipeline stage that writes it (None for controls)
    label: str   # display name in tables and figures
    doc: str     # one line: what it is
    survivors: int = 1  # samples per source at most (the filter's best ``survivors`` survivors)


RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("edm_class", "release_edm_class", "EDM class-conditional",
            "class-conditional EDM baseline: conditioned on the source's labels, no filter"),
    Release("edm_class_autoguide", "release_autoguide", "EDM class-conditional, autoguidance",
            "edm_class with the network's early checkpoint as the guide instead of its unconditional mode"),
    Release("diadm_raw", "release_diadm_raw", "DiADM raw (no filter)",
            "DiADM: conditioned on the source's embedding, the first candidate, no filter"),
    Release("diadm_raw_autoguide", "release_autoguide", "DiADM raw, autoguidance",
            "diadm_raw with the network's early checkpoint as the guide instead of its unconditional mode"),
    Release("diadm_raw_paper", "release_diadm_paper", "DiADM raw, the paper's condition",
            "diadm_raw conditioned as in the paper: the source's clean embedding alone (no noise, no labels)"),
    Release("diadm_filter", "release_diadm_filter", "DiADM + filter",
            "DiADM + privacy filter: the most label-consistent candidate that passes every veto"),
    Release("diadm_filter_2nd", "release_diadm_filter", "DiADM + filter + 2nd best",
            "DiADM + privacy filter, keeping each source's second-best survivor too", survivors=2),
    Release("diadm_filter_4", "release_diadm_filter", "DiADM + filter, 4 survivors",
            "DiADM + privacy filter, keeping each source's four most label-consistent survivors", survivors=4),
)}

CONTROLS: dict[str, Release] = {r.name: r for r in (
    Release("positive_control", None, "positive control (noised training images)",
            "training images with light Gaussian noise: an attack must fire on it"),
    Release("negative_control", None, "negative control (held-out real patients)",
            "real images of patients never trained on: an attack must stay at baseline"),
)}

GENERATED: tuple[str, ...] = tuple(RELEASES)
FILTERED: tuple[str, ...] = ("diadm_filter", "diadm_filter_2nd", "diadm_filter_4")  # one filter run, 1 / 2 / 4 per source
REAL = "real"  # the real-data row of the utility tables
_REAL_LABEL = "real data"


def label(name: str) -> str:
    """Display label of a release, a control or ``"real"``; unknown names raise naming the known ones."""
    if name == REAL:
        return _REAL_LABEL
    for table in (RELEASES, CONTROLS):
        if name in table:
            return table[name].label
    raise KeyError(f"unknown release {name!r}; known: {[REAL, *CONTROLS, *RELEASES]}")


def release_stage(name: str) -> str:
    """The pipeline stage that writes generated release ``name``."""
    if name not in RELEASES:
        raise KeyError(f"unknown generated release {name!r}; known: {list(RELEASES)}")
    return RELEASES[name].stage


def release_stages() -> tuple[str, ...]:
    """Every stage that writes a release (each once, in release order)."""
    return tuple(dict.fromkeys(r.stage for r in RELEASES.values()))
