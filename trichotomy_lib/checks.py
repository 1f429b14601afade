"""The numbers a notebook asserts, with thresholds set by the profile (section ``checks``).

A notebook's checks say what must hold for the run to count: a verifier that recognises unseen
patients, a positive control that the attack catches, ... How high the bar is depends on the
budget, so each profile sets its own thresholds (the ``smoke`` profile's hold for its
seconds-long models, the ``default`` profile's are the project's targets), and every check
runs under every profile. A threshold of ``null`` reports the number without asserting.

These thresholds describe the PhantomCXR testbed. On a data holder's own images
(``data.source: filelist``) the numbers are reported, never asserted: a weak verifier on real
data is a finding to read, not a bug in the run.
"""

from __future__ import annotations

import operator

from .config import ConfigError, register_section, section

CHECK_DEFAULTS: dict = {
    "identity_margin": None,      # 00: defender precision@1 minus raw-pixel precision@1 on test patients (> this)
    "reid_auroc": None,           # 01: verification AUROC of each verifier on unseen patients (>= this)
    "reid_pixel_margin": None,    # 01: verifier AUROC minus the raw-pixel AUROC (>= this)
    "classifier_auroc": None,     # 02, 07: mean test AUROC of the real-data classifier (>= this)
    "class_guided_auroc": None,   # 04: mean AUROC of class-conditional samples at w = 2, by the reference classifier
    "veto_fires": None,           # 05: fraction of first-attempt candidates the defender vetoes (>= this)
    "positive_risk": None,        # 06: strongest attacker's risk on noised copies of the training set (>= this)
    "positive_all_rate": None,    # 06: positive control re-identified against the training set (>= this)
    "controls_monotone": None,    # 06: share of (leak ladder, attacker) whose risk falls as the leak weakens (>= this)
    "veto_sensitivity": None,     # 06: the filter's lowest veto rate on planted near-duplicates (>= this)
    "paper_condition_risk": None, # 06: lower bound of the strongest attacker's risk on raw DiADM under the paper's
                                  #   condition (> this: the suite sees the identity an unfiltered DiADM sample carries)
    "cross_site_diagonal": None,  # 07: true: each site's own test AUROC beats the off-diagonal mean
    "finding_auroc": None,        # 07: the real row's weakest per-finding AUROC (>= this: every finding learnable)
    "utility_ci_halfwidth": None, # 07: half-width of the real row's mean-AUROC interval, points (<= this: power)
}
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}


@register_section("checks")
def checks_config(cfg: dict) -> dict:
    """The ``checks`` section over ``CHECK_DEFAULTS`` (unknown names rejected)."""
    c = section(cfg, "checks", CHECK_DEFAULTS)
    for key, value in c.items():
        if value is not None and not isinstance(value, (int, float)):
            raise ConfigError(f"checks.{key} must be a number, true/false or null, got {value!r}")
    return c


def expect(cfg: dict, name: str, value: float, op: str = ">=", what: str = "") -> bool:
    """Assert ``value <op> checks[name]`` for the PhantomCXR testbed; report it otherwise.

    Returns True when the check was asserted (and held), False when it was only reported
    (threshold null, or not the testbed). Raises AssertionError naming the check on failure.
    """
    if name not in CHECK_DEFAULTS:
        raise KeyError(f"unknown check {name!r}; known: {sorted(CHECK_DEFAULTS)}")
    threshold = checks_config(cfg)[name]
    label = what or name
    if threshold is None or (cfg.get("data") or {}).get("source", "phantom") != "phantom":
        print(f"{label}: {value:.4g} (reported, not asserted)")
        return False
    if not _OPS[op](value, threshold):
        raise AssertionError(f"check {name}: {label} = {value:.4g}, expected {op} {threshold:g} "
                             f"(checks.{name} of profile {cfg.get('profile')!r})")
    print(f"{label}: {value:.4g} {op} {threshold:g}: OK")
    return True
