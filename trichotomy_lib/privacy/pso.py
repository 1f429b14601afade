"""Predicate singling out (PSO) attack on an image release, with its control (DESIGN step 7b).

The game (Cohen & Nissim, PNAS 2020). A dataset x of n i.i.d. rows is released through a
mechanism M; the attacker sees M(x) and outputs a predicate p. It *isolates* x if p holds for
exactly one row. The weight of p is w = Pr[p(fresh row)], and by chance alone a predicate of
weight w isolates with probability

    B(n, w) = n · w · (1 − w)^(n−1)                     (≤ 1/e, maximal at w = 1/n)      (1)

M is PSO-secure if no attacker isolates with small-weight predicates meaningfully more often
than this baseline.

Rows here are **patients**: a patient is what is drawn i.i.d. (PhantomCXR draws patients
independently; scans of one patient are dependent), so a row is the set of a patient's
images, and a predicate holds for a patient when it holds for any of their images. n is the
number of patients, and success = the predicate holds for images of exactly one patient.

Predicates the attacker builds from a released image s (all through the AUDITOR verifier):

* ``"verifier"``: "the auditor says record x is the same patient as s",
  ``logit(s, x) ≥ t``, with t at least the auditor's own decision threshold (probability 0.5)
  and raised, if needed, until the predicate's weight is at most the target weight;
* ``"ball"``: "x's auditor embedding lies within radius r of s's", ``‖e(x) − e(s)‖₂ ≤ r``.

The threshold of each kind is ONE number per release, calibrated on held-out patients (the
attacker knows the distribution, so may sample from it) so that the mean weight of the
release's predicates is ``target = weight_factor / n``. Why far below 1/n: with a weight of
1/n a predicate that contains the source patient still catches Poisson(1) others, so even a
copy of the training set isolates only ~1/e of the time — as often as chance (1). Isolation
is informative when chance matches are rare (w ≪ 1/n) but the release still points at one
training patient. The held-out patients are split in two halves: thresholds are calibrated
on one, the weights reported are estimated on the other (an unbiased estimate, independent
of both the training and the control population), and B(n, w) from (1) is reported beside
the control rate as the theory's prediction of it.

Risk (Anonymeter, Giomi et al. PETS 2023): the same predicates are evaluated on the training
population (attack rate a) and on an equally large control population never trained on
(control rate c); ``risk = (a − c) / (1 − c)``. Its 95 % CI resamples the predicates, whole
source patients at a time, each with its attack and control outcome together
(``stats.paired_singling_out_risk``: a cluster bootstrap over patients, paired).
The headline (``primary``) kind is ``"ball"``: the verifier head was trained to answer
same/different at 0.5, not to rank, and its logit saturates (near-copies and genuinely
similar patients get the same top score), so at a weight far below 1/n it has little room;
distance in the same auditor embedding keeps ranking. Both kinds are always reported.

``attack.py`` plays this game for every attacker on one release (``attack_release``) and adds
the re-identification audit (``evaluate_release``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import section
from ..evaluation.stats import cohen_nissim_isolation_probability, paired_singling_out_risk, wilson_interval
from .. import seeds

__all__ = ["PRIVACY_DEFAULTS", "PREDICATES", "ATTACKER_SPACES", "ATTACKER_LABELS", "privacy_config", "Population", "patient_scores",
           "calibrate_threshold", "count_matches", "control_draws", "evaluate_pso"]

PREDICATES = ("verifier", "ball")

# The profile section ``privacy`` (plain dict, EDM2 style; unknown keys are rejected).
PRIVACY_DEFAULTS: dict = {
    "n_attacks": 200,            # released images used as predicates (random subsample; >= 1; null: all)
    "predicates": ["verifier", "ball"],  # predicate kinds attacked (subset of PREDICATES)
    "primary": "ball",           # the kind whose risk is the headline column / the asserts (see below)
    "weight_factor": 0.1,        # target predicate weight = weight_factor / n  (in (0, 1])
    "weight_sweep": [0.03, 0.1, 0.3],  # the whole game again at each of these weight factors (each in (0, 1];
                                 #   [] or null: not swept): the attacker chooses the weight, so the verdict
                                 #   is read at several beside the headline's (stage ``privacy_weight_sweep``)
    "verifier_threshold": 0.5,   # floor of the verifier predicate's "same patient" probability
    "audit_k": 16,               # training images retrieved per released image (vs-all audit)
    "audit_threshold": 0.5,      # the auditor's pairwise "same patient" probability (paper: 0.5)
    "audit_false_alarm": 0.05,   # vs-all re-id threshold: this rate on held-out patients (audit.py)
    "positive_sigma": 0.05,      # positive control: Gaussian noise σ on training images ([-1, 1] units)
    "n_control_patients": None,  # control population size (null: number of training patients)
    "control_draws": 1,          # K: the control population is K disjoint populations of the training split's size,
                                 #   and each predicate's control outcome their mean (``control_draws``; PhantomCXR:
                                 #   the populations stage draws K times as many patients; file lists: one; >= 1)
    "n_weight_patients": None,   # held-out calibration/weight population (null: training patients)
    "nn_quantile": 0.05,         # "closer than this quantile of held-out real NN distances"
    "nn_max_size": 64,           # pixel NN distances on images area-downsampled to at most this size
    "level": 0.95,               # confidence level of every interval
    "n_boot": 4000,              # bootstrap resamples of the singling-out intervals (>= 100)
    "batch_size": 256,           # images per auditor forward pass
    # Attackers beyond the auditor's two: a ball predicate in each of these feature spaces
    # ("pixels": the whole image; "encoder": the pseudo-conditioning encoder the generator is
    # conditioned on, which saw the training patients — more than an attacker holds;
    # "public_encoder": the same recipe trained by the attacker on public patients, the fair
    # version; "defender": the filter's own verifier). The headline is the strongest.
    "attackers": ["pixels", "encoder", "public_encoder", "defender"],
    "reliability_seeds": 3,      # defenders (the filter's + retrained replicas) in the seed-agreement test (>= 1)
}
ATTACKER_SPACES = ("pixels", "encoder", "public_encoder", "defender")
# Row-field prefix of every attacker → its display name.
ATTACKER_LABELS = {"ball": "auditor-embedding ball", "verifier": "auditor verdict", "pixels_ball": "pixel ball",
                   "encoder_ball": "conditioning-encoder ball", "public_encoder_ball": "attacker's public-encoder ball",
                   "defender_ball": "defender-embedding ball"}


def privacy_config(cfg: dict) -> dict:
    """The profile's ``privacy`` section over ``PRIVACY_DEFAULTS``, checked (errors name the field)."""
    p = section(cfg, "privacy", PRIVACY_DEFAULTS)
    if p["n_attacks"] is not None and not (isinstance(p["n_attacks"], int) and p["n_attacks"] >= 1):
        raise ValueError(f"privacy.n_attacks must be an integer >= 1 or null, got {p['n_attacks']!r}")
    kinds = list(p["predicates"])
    if not kinds or any(k not in PREDICATES for k in kinds):
        raise ValueError(f"privacy.predicates must be a non-empty subset of {PREDICATES}, got {kinds!r}")
    if p["primary"] not in kinds:
        raise ValueError(f"privacy.primary must be one of privacy.predicates {kinds}, got {p['primary']!r}")
    if not 0 < p["weight_factor"] <= 1:
        raise ValueError(f"privacy.weight_factor must be in (0, 1], got {p['weight_factor']}")
    if p["weight_sweep"] is not None and not isinstance(p["weight_sweep"], (list, tuple)):
        raise ValueError(f"privacy.weight_sweep must be a list of weight factors (e.g. [0.03, 0.1, 0.3]), "
                         f"got {p['weight_sweep']!r}")
    sweep = list(p["weight_sweep"] or [])
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 1 for w in sweep) \
            or len(set(sweep)) != len(sweep):
        raise ValueError("privacy.weight_sweep must be distinct numbers in (0, 1] (or [] / null), "
                         f"got {p['weight_sweep']!r}")
    p["weight_sweep"] = [float(w) for w in sweep]
    for key in ("verifier_threshold", "audit_threshold", "audit_false_alarm", "level", "nn_quantile"):
        if not 0 < p[key] < 1:
            raise ValueError(f"privacy.{key} must be in (0, 1), got {p[key]}")
    if not (isinstance(p["n_boot"], int) and p["n_boot"] >= 100):
        raise ValueError(f"privacy.n_boot must be an integer >= 100, got {p['n_boot']!r}")
    if not (isinstance(p["audit_k"], int) and p["audit_k"] >= 1):
        raise ValueError(f"privacy.audit_k must be an integer >= 1, got {p['audit_k']!r}")
    if not (isinstance(p["nn_max_size"], int) and p["nn_max_size"] >= 4):
        raise ValueError(f"privacy.nn_max_size must be an integer >= 4, got {p['nn_max_size']!r}")
    if not (isinstance(p["control_draws"], int) and not isinstance(p["control_draws"], bool) and p["control_draws"] >= 1):
        raise ValueError(f"privacy.control_draws must be an integer >= 1, got {p['control_draws']!r}")
    if p["control_draws"] > 1 and p["n_control_patients"] is not None:
        raise ValueError(f"privacy.control_draws={p['control_draws']} draws populations of the training split's "
                         f"size; it cannot be combined with privacy.n_control_patients={p['n_control_patients']} "
                         "(set one of them)")
    for key in ("n_control_patients", "n_weight_patients"):
        if p[key] is not None and not (isinstance(p[key], int) and p[key] >= 2):
            raise ValueError(f"privacy.{key} must be an integer >= 2 or null, got {p[key]!r}")
    p["predicates"] = kinds
    spaces = list(p["attackers"] or [])
    if any(s not in ATTACKER_SPACES for s in spaces) or len(set(spaces)) != len(spaces):
        raise ValueError(f"privacy.attackers must be distinct names from {ATTACKER_SPACES}, got {spaces!r}")
    p["attackers"] = spaces
    if not (isinstance(p["reliability_seeds"], int) and p["reliability_seeds"] >= 1):
        raise ValueError(f"privacy.reliability_seeds must be an integer >= 1, got {p['reliability_seeds']!r}")
    return p


# ----------------------------------------------------------------------------- populations
class Population:
    """Auditor embeddings of a set of images grouped by patient (the rows of the game)."""

    def __init__(self, emb: torch.Tensor, patient_ids):
        pids = np.asarray(patient_ids).astype(str)
        if len(pids) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(pids)} patient ids")
        self.emb = emb.float()
        self.patients, codes = np.unique(pids, return_inverse=True)
        self.codes = torch.from_numpy(codes.astype(np.int64))

    @property
    def n(self) -> int:
        return len(self.patients)

    def restrict(self, patients) -> "Population":
        """Only the images of ``patients``."""
        keep = np.isin(self.patients[self.codes.numpy()], np.asarray(patients))
        return Population(self.emb[torch.from_numpy(keep)], self.patients[self.codes.numpy()][keep])

    def sample(self, n: int, rng: np.random.Generator, must_keep=()) -> "Population":
        """``n`` of its patients at random (the ones in ``must_keep`` first, if any)."""
        must = rng.permutation(np.intersect1d(np.asarray(must_keep, dtype=str), self.patients))
        rest = rng.permutation(np.setdiff1d(self.patients, must))
        chosen = np.concatenate([must[:n], rest[: max(0, n - len(must))]])
        return self.restrict(chosen)


def _raw_scores(kind: str, q: torch.Tensor, k: torch.Tensor, auditor) -> torch.Tensor:
    """(len(q), len(k)) "how strongly does image k satisfy predicate q" — larger = more."""
    if kind == "verifier":
        return auditor.score_matrix(q, k)        # the auditor's logit of "same patient"
    if kind == "ball":
        return -torch.cdist(q.float(), k.float())  # minus the embedding distance
    raise ValueError(f"unknown predicate kind {kind!r}; known: {PREDICATES}")


def patient_scores(kind: str, pred_emb: torch.Tensor, pop: Population, auditor=None,
                   chunk: int = 256) -> torch.Tensor:
    """(P, n_patients): for each predicate, the best score over each patient's images.

    A patient satisfies predicate p (threshold t) iff this score is >= t, i.e. iff one of
    their images does. Computed in blocks of ``chunk`` predicates (memory O(chunk · N)).
    """
    out = torch.empty(len(pred_emb), pop.n)
    for i in range(0, len(pred_emb), chunk):
        s = _raw_scores(kind, pred_emb[i:i + chunk], pop.emb, auditor)
        block = torch.full((len(s), pop.n), -torch.inf)
        out[i:i + chunk] = block.scatter_reduce_(1, pop.codes.expand(len(s), -1), s, reduce="amax")
    return out


def calibrate_threshold(scores: torch.Tensor, target_weight: float, floor: float | None = None) -> tuple[float, dict]:
    """One threshold t for all predicates so that their mean weight on ``scores`` is ~target.

    ``scores`` (P, m): patient scores of P predicates on m held-out patients. The fraction
    of (predicate, patient) pairs with score >= t is the mean weight; t is put midway between
    the ``j``-th and ``(j+1)``-th largest score with j = floor(target · P · m) (so at most j
    pairs pass; j = 0: just above the largest). ``floor``: t is never below it (the verifier's
    own decision threshold). Returns ``(t, info)``.
    """
    if not 0 < target_weight <= 1:
        raise ValueError(f"target weight must be in (0, 1], got {target_weight}")
    flat = scores.flatten().double()
    flat = flat[torch.isfinite(flat)]
    if flat.numel() == 0:
        raise ValueError("no finite calibration scores")
    j = int(np.floor(target_weight * flat.numel()))
    top = torch.topk(flat, min(j + 1, flat.numel())).values
    if j == 0:
        t = float(np.nextafter(np.float32(top[0]), np.float32(np.inf)))   # scores are float32
    elif j >= flat.numel():
        t = float(flat.min())
    else:
        t = float((top[j - 1] + top[j]) / 2)
    floored = floor is not None and t < floor
    if floored:
        t = float(floor)
    return t, {"calibration_pairs": int(flat.numel()), "calibration_j": j, "floored": bool(floored)}


def count_matches(scores: torch.Tensor, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Per predicate: number of patients satisfying it, and the (first) one that does (-1: none)."""
    hit = scores >= t
    count = hit.sum(1).numpy()
    who = torch.where(hit.any(1), hit.float().argmax(1), torch.tensor(-1)).numpy()
    return count, who


def control_draws(control: Population, n: int, rng: np.random.Generator) -> list[Population]:
    """The control populations of a game on n training patients: ``control.n // n`` = K disjoint
    ones of n patients each (seeded), every predicate is played on all of them and its control
    outcome is their mean; K = 1: one population of n, subsampled when ``control`` is larger."""
    if not 1 <= n <= control.n:
        raise ValueError(f"a control population of {control.n} patients has no draw of {n}")
    k = control.n // n
    if k == 1:
        return [control.sample(n, rng) if control.n > n else control]
    perm = rng.permutation(control.patients)
    return [control.restrict(perm[i * n:(i + 1) * n]) for i in range(k)]


def evaluate_pso(pred_emb: torch.Tensor, pred_source_patients, train: Population, control: Population,
                 heldout: Population, auditor, kinds=PREDICATES, weight_factor: float = 0.1,
                 verifier_threshold: float = 0.5, seed: int = 0, level: float = 0.95, groups=None,
                 n_boot: int = 4000) -> dict:
    """The attack game for one release's predicates → ``{kind: result dict}``.

    Args:
        pred_emb: (P, D) auditor embeddings of the released images used as predicates.
        pred_source_patients: (P,) the training patient each comes from, or None (unknown or
            no source). Used only to (i) keep predicates whose source is in the training
            subsample when the populations are equalised and (ii) report how often the
            isolated patient is the source's (``correct_*``) — the attacker never sees it.
        train, control: the training and control populations. Isolation depends on n, so the two
            rates are only comparable at equal n: a larger training population (file-list data)
            is subsampled to the control's size (seeded); a control population K >= 2 times
            the training population's size is split into K disjoint control populations of that
            size (seeded), each predicate is played on all of them, and its control outcome is
            the share that isolates (the control rate's sampling error shrinks with K; the attack
            side cannot grow: its patients are the training split's). Between 1 and 2 times:
            subsampled to the training population's size.
        heldout: patients in neither, split in halves: threshold calibration / weight estimate.
        kinds: predicate kinds (``PREDICATES``). weight_factor: target weight · n (0, 1].
        verifier_threshold: floor of the verifier predicate's probability (default 0.5).
        seed: seeds the subsampling, the held-out halves and the bootstrap. level: CI level.
        groups: (P,) the cluster of each predicate for the bootstrap (default: its source
            patient where known, else each predicate alone). n_boot: bootstrap resamples.

    Each result: threshold, target_weight, weight (estimate with Wilson interval, pooled over
    predicate × patient pairs of the weight half), cn_baseline = B(n, weight) from (1),
    attack/control successes (control: over all K populations) and rates, ``control_draws`` K,
    risk with CI and warning (``paired_singling_out_risk``),
    mean number of matched patients in train and control, correct isolation rate, and
    ``"hits"``: ``{"attack", "control", "groups", "control_draws"}`` per predicate (control: the
    share of the K control populations it isolates in) (for the multiplicity-corrected
    interval over attackers, ``attack.strongest_attacker``; not a table field).
    """
    rng = seeds.rng(seed, "privacy", "pso")
    src = None if pred_source_patients is None else np.asarray(pred_source_patients).astype(str)
    if groups is None:
        groups = src if src is not None else np.arange(len(pred_emb))
    groups = np.asarray(groups)
    if groups.shape != (len(pred_emb),):
        raise ValueError(f"groups must have one label per predicate ({len(pred_emb)},), got shape {groups.shape}")
    keep = np.ones(len(pred_emb), dtype=bool)
    n = min(train.n, control.n)
    if train.n > n:
        train = train.sample(n, rng, must_keep=() if src is None else np.unique(src))
        if src is not None:
            keep = np.isin(src, train.patients)
    controls = control_draws(control, n, rng)
    draws = len(controls)
    if not keep.any():
        raise ValueError("no predicate's source patient is in the (subsampled) training population")
    pred_emb = pred_emb[torch.from_numpy(keep)]
    src = None if src is None else src[keep]
    groups = groups[keep]
    if heldout.n < 2:
        raise ValueError(f"the held-out weight population has {heldout.n} patient(s); need >= 2")
    perm = rng.permutation(heldout.patients)
    cal, wgt = heldout.restrict(perm[: heldout.n // 2]), heldout.restrict(perm[heldout.n // 2:])
    target = weight_factor / n
    out = {}
    for kind in kinds:
        floor = float(torch.logit(torch.tensor(verifier_threshold, dtype=torch.float64))) if kind == "verifier" else None
        t, info = calibrate_threshold(patient_scores(kind, pred_emb, cal, auditor), target, floor)
        w_hits = int((patient_scores(kind, pred_emb, wgt, auditor) >= t).sum())
        w_trials = len(pred_emb) * wgt.n
        cnt_t, who_t = count_matches(patient_scores(kind, pred_emb, train, auditor), t)
        cnt_c = np.stack([count_matches(patient_scores(kind, pred_emb, c, auditor), t)[0] for c in controls])
        att, ctl = cnt_t == 1, (cnt_c == 1).mean(0)
        risk = paired_singling_out_risk(att, ctl, groups, level, n_boot, seeds.derive(seed, "privacy", "bootstrap"),
                                        control_draws=draws)
        w_hat, w_lo, w_hi = wilson_interval(w_hits, w_trials, level)
        res = {
            "n_population": n, "n_predicates": len(pred_emb), "threshold": t,
            "radius": -t if kind == "ball" else np.nan, "target_weight": target, **info,
            "weight": w_hat, "weight_lo": w_lo, "weight_hi": w_hi,
            "cn_baseline": float(cohen_nissim_isolation_probability(n, w_hat)),
            "attack_successes": int(att.sum()), "control_successes": int((cnt_c == 1).sum()), "control_draws": draws,
            "attack_rate": risk["attack_rate"], "attack_lo": risk["attack_ci"][0], "attack_hi": risk["attack_ci"][1],
            "control_rate": risk["control_rate"], "control_lo": risk["control_ci"][0], "control_hi": risk["control_ci"][1],
            "risk": risk["risk"], "risk_lo": risk["risk_lo"], "risk_hi": risk["risk_hi"],
            "risk_unclipped": risk["risk_unclipped"], "warning": risk["warning"],
            "matches_train_mean": float(cnt_t.mean()), "matches_control_mean": float(cnt_c.mean()),
            "interval": risk["interval"], "n_groups": risk["n_groups"],
            "hits": {"attack": att, "control": ctl, "groups": groups, "control_draws": draws},
        }
        if src is not None:
            correct = att & (train.patients[np.maximum(who_t, 0)] == src)
            res["correct_rate"] = float(correct.mean())
        else:
            res["correct_rate"] = np.nan
        out[kind] = res
    return out


# ----------------------------------------------------------------------------- one release
