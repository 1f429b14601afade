"""The export rule: share only if no tested attacker's singling-out risk can exceed a bound.

Each attacker row carries a risk (Anonymeter's ``(attack − control) / (1 − control)``) with a
confidence interval. The rule is one-sided and conservative: the *upper* bound of the
interval is what counts, so an audit with too few attacks to be sure fails rather than
passes. The strongest attacker is the one with the largest upper bound; the export passes
when that bound is at most ``bound``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_BOUND", "Failure", "Verdict", "ExportRefused", "judge", "format_number", "format_weight"]

DEFAULT_BOUND = 0.05


def format_number(x: float, digits: int = 3) -> str:
    """A short, readable rendering: ``0.31``, ``0.0512``, ``1.2e-05``."""
    return format(float(x), f".{digits}g")


def format_weight(w: float) -> str:
    """Predicate weights are small: ``1.2e-04`` below 0.01, else ``0.05``."""
    return f"{w:.1e}" if w < 0.01 else format_number(w, 2)


def _distinct(a: float, b: float) -> tuple[str, str]:
    """Renderings of a and b with enough digits that unequal numbers never print alike."""
    for digits in range(3, 17):
        sa, sb = format_number(a, digits), format_number(b, digits)
        if sa != sb or a == b:
            return sa, sb
    return repr(a), repr(b)


@dataclass(frozen=True)
class Failure:
    """One attacker whose upper risk bound exceeds the export bound."""

    attacker: str
    risk_hi: float
    bound: float

    @property
    def excess(self) -> float:
        return self.risk_hi - self.bound

    def describe(self) -> str:
        hi, bound = _distinct(self.risk_hi, self.bound)
        return f"{self.attacker}: risk upper bound {hi} > {bound} (by {format_number(self.excess, 2)})"


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``judge``.

    passed:     whether every attacker's upper risk bound is at most ``bound``.
    bound:      the bound applied, in (0, 1].
    level:      confidence level of the intervals, in (0, 1).
    strongest:  the attacker with the largest upper risk bound (first in table order on ties).
    risk_hi:    that attacker's upper bound.
    weights:    the predicate weight of every attacker, in table order.
    failures:   every attacker above the bound (empty when passed), in table order.
    """

    passed: bool
    bound: float
    level: float
    strongest: str
    risk_hi: float
    weights: tuple[float, ...]
    failures: tuple[Failure, ...]

    @property
    def percent(self) -> str:
        return format_number(100 * self.level, 4)

    @property
    def weight_text(self) -> str:
        lo, hi = format_weight(min(self.weights)), format_weight(max(self.weights))
        return f"predicate weight {hi}" if lo == hi else f"predicate weights {lo} to {hi}"

    @property
    def reason(self) -> str | None:
        """Why the audit failed ("a: risk upper bound 0.31 > 0.05 (by 0.26); …"), None if it passed."""
        return None if self.passed else "; ".join(f.describe() for f in self.failures)

    @property
    def sentence(self) -> str:
        """The plain-English verdict printed in the dataset card."""
        if self.passed:
            return (f"No attacker tested singles out a patient beyond chance at {self.weight_text}; "
                    f"risk ≤ {format_number(self.risk_hi)} at {self.percent} % confidence "
                    f"(strongest attacker: {self.strongest}).")
        return (f"The privacy audit FAILED: {self.reason}. The data is NOT shown to be PSO-secure "
                f"(the rule is that every attacker's upper {self.percent} % risk bound is at most "
                f"{format_number(self.bound)}).")

    def to_dict(self) -> dict:
        return {
            "audit_passed": self.passed, "bound": self.bound, "level": self.level,
            "rule": f"largest upper {self.percent} % bound of singling-out risk over all attackers <= bound",
            "strongest_attacker": self.strongest, "strongest_risk_hi": self.risk_hi,
            "failures": [{"attacker": f.attacker, "risk_hi": f.risk_hi, "excess": f.excess} for f in self.failures],
            "sentence": self.sentence,
        }


class ExportRefused(RuntimeError):
    """An export that must not be shared: a failed privacy audit or a forbidden token found.

    ``verdict``: the audit's ``Verdict`` (None when refused for a leak); ``leaks``: the
    ``Leak`` entries found (empty when refused for the audit).
    """

    def __init__(self, message: str, verdict: Verdict | None = None, leaks=()):
        super().__init__(message)
        self.verdict = verdict
        self.leaks = list(leaks)


def _check_unit(value: float, name: str, closed_hi: bool) -> float:
    value = float(value)
    if not (0 < value < 1 or (closed_hi and value == 1)):
        raise ValueError(f"{name} must be in (0, {'1]' if closed_hi else '1)'}, got {value}")
    return value


def judge(attackers: list[dict], bound: float = DEFAULT_BOUND, level: float = 0.95) -> Verdict:
    """Apply the export rule to checked privacy rows (``tables.check_privacy``).

    Args:
        attackers: rows with at least ``attacker``, ``weight`` and ``risk_hi``.
        bound: the largest acceptable upper risk bound, in (0, 1] (default 0.05).
        level: confidence level of the rows' intervals, in (0, 1) (default 0.95); used
            in the text only — the intervals are computed upstream.
    """
    bound = _check_unit(bound, "bound", closed_hi=True)
    level = _check_unit(level, "level", closed_hi=False)
    if not attackers:
        raise ValueError("privacy: no attacker rows to judge")
    strongest = max(attackers, key=lambda r: r["risk_hi"])   # max keeps the first on ties
    failures = tuple(Failure(r["attacker"], r["risk_hi"], bound) for r in attackers if r["risk_hi"] > bound)
    return Verdict(passed=not failures, bound=bound, level=level, strongest=strongest["attacker"],
                   risk_hi=strongest["risk_hi"], weights=tuple(r["weight"] for r in attackers), failures=failures)
