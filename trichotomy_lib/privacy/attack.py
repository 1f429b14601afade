"""Every attacker's singling-out game on one release, and the full privacy row (DESIGN step 7b).

An attacker is a predicate family in one feature space (``pso.py`` plays the game): the
auditor's embedding (a ball, and the auditor's own verdict), raw pixels, the pseudo-
conditioning encoder the generator is conditioned on, the defender's embedding. Each is
calibrated to the same target weight on held-out patients. A release is as private as its
strongest attacker allows, so the headline is the maximum over attackers, its interval widened
for having tried several (Bonferroni). Every interval resamples the predicates by source patient,
each with its attack and control outcome together (``stats.paired_singling_out_risk``), the same
resamples for every attacker of a release.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import seeds
from ..data.imageset import ImageSet
from ..evaluation.stats import paired_singling_out_risk
from .audit import EmbeddingCache, nn_summary, pixel_nn_distances, reid_audit
from .pso import ATTACKER_LABELS, Population, evaluate_pso, privacy_config

__all__ = ["strongest_attacker", "attack_release", "attack_summary", "evaluate_release"]


def strongest_attacker(hits: dict, level: float = 0.95, n_boot: int = 4000, seed: int = 0) -> dict:
    """The attacker with the largest upper risk bound, the bound corrected for having tried
    ``m = len(hits)`` of them (Bonferroni: each interval at level 1 − (1 − level)/m).

    ``hits``: ``{attacker: {"attack", "control", "groups"[, "control_draws"]}}``, the per-predicate outcomes
    ``evaluate_pso`` returns; every interval is ``stats.paired_singling_out_risk`` at the
    corrected level (same resamples for every attacker: same ``seed``, predicates and groups).
    Ties on the upper bound go to the larger point estimate. Returns ``{"strongest_attacker",
    "strongest_risk", "strongest_risk_lo", "strongest_risk_hi", "strongest_level", "n_attackers"}``
    and every attacker's corrected interval, ``"<attacker>_risk_lo_corrected"`` / ``"_hi_corrected"``
    (what a check over all attackers at once, e.g. "every negative control includes 0", reads).
    """
    if not hits:
        raise ValueError("no attacker to take the maximum over")
    corrected = 1 - (1 - level) / len(hits)
    best, bounds = None, {}
    for name, h in hits.items():
        r = paired_singling_out_risk(h["attack"], h["control"], h["groups"], corrected, n_boot, seed,
                                     control_draws=h.get("control_draws", 1))
        bounds.update({f"{name}_risk_lo_corrected": r["risk_lo"], f"{name}_risk_hi_corrected": r["risk_hi"]})
        key = (-1.0 if not np.isfinite(r["risk_hi"]) else r["risk_hi"], r["risk"] if np.isfinite(r["risk"]) else -1.0)
        if best is None or key > best[0]:
            best = (key, name, r)
    _, name, r = best
    return {"strongest_attacker": name, "strongest_risk": r["risk"], "strongest_risk_lo": r["risk_lo"],
            "strongest_risk_hi": r["risk_hi"], "strongest_level": corrected, "n_attackers": len(hits), **bounds}


def attack_release(release: ImageSet, source_index, train: ImageSet, control: ImageSet, auditor, cfg: dict,
                   heldout: ImageSet | None = None, embed=None, name: str = "release", spaces: dict | None = None) -> dict:
    """The predicate-singling-out game of every attacker on one release → a flat dict.

    Args:
        release: released images. source_index: (N,) index of each one's source in ``train``
            (None for releases without sources, e.g. the negative control).
        train: the training split. control: the control population (patients never trained
            on, as many as ``train`` has, or K times as many: K control draws, ``pso.control_draws``).
        auditor: the AUDITOR verifier (never the defender the filter used): the ball and
            verdict predicates in its embedding.
        cfg: the config (``seed`` and the ``privacy`` section, see ``PRIVACY_DEFAULTS``).
        heldout: held-out patients for calibrating every attacker's threshold and estimating
            predicate weights (default: the control population itself — then the control rate is
            measured on the sample the thresholds were fitted to; pass a separate population).
        embed: ``ImageSet -> auditor embeddings`` (default an ``EmbeddingCache``).
        name: the release's name (seeds its predicate subsample).
        spaces: further attackers, ``{space name: ImageSet -> (N, D) features}`` (raw pixels, the
            pseudo-conditioning encoder, the defender's embedding, ...): each gets the ball
            predicate in its own space, calibrated like the auditor's, fields
            ``"<space>_ball_<field>"``.

    Returns ``{"release", "n_released", "<attacker>_<field>"`` for every attacker (fields of
    ``evaluate_pso``), the primary auditor kind again as ``"pso_<field>"``, and the strongest
    attacker (``strongest_attacker``)``}``.
    """
    p = privacy_config(cfg)
    seed = int(cfg["seed"])
    embed = embed or EmbeddingCache(auditor, p["batch_size"])
    if len(release) == 0:
        raise ValueError(f"release {name!r} is empty")
    heldout = heldout if heldout is not None else control
    for what, pop in (("training", train), ("control", control), ("held-out", heldout)):
        if len(pop) == 0:
            raise ValueError(f"release {name!r}: the {what} population is empty")
        if pop.images.shape[1:] != release.images.shape[1:]:
            raise ValueError(f"release {name!r}: images are {release.images.shape[1:]} but the {what} population's "
                             f"are {pop.images.shape[1:]}")
    overlap = np.intersect1d(np.asarray(train.patient_ids).astype(str), np.asarray(control.patient_ids).astype(str))
    if len(overlap):
        raise ValueError(f"control population shares {len(overlap)} patient id(s) with the training split "
                         f"(e.g. {overlap[0]!r}); it must be patients never trained on")
    row = {"release": name, "n_released": len(release)}
    # predicates: a seeded subsample of the released images (all of them when n_attacks is null)
    n_att = len(release) if p["n_attacks"] is None else min(p["n_attacks"], len(release))
    pick = torch.from_numpy(np.sort(seeds.rng(seed, "privacy", "attacks", name).choice(len(release), n_att,
                                                                                       replace=False)))
    src_pids = None
    if source_index is not None:
        src_pids = np.asarray(train.patient_ids).astype(str)[np.asarray(source_index)[pick.numpy()]]
    # bootstrap clusters: a predicate's source patient, else the released image's own patient
    # (a control release of real scans: one patient's scans are dependent)
    groups = src_pids if src_pids is not None else np.asarray(release.patient_ids).astype(str)[pick.numpy()]
    populations = (("train", train), ("control", control), ("heldout", heldout))
    hits = {}
    for space, features, kinds in (("auditor", embed, p["predicates"]),
                                   *((s, f, ("ball",)) for s, f in (spaces or {}).items())):
        pred = torch.as_tensor(features(release)).float()
        pops = {}
        for key, images in populations:
            x = torch.as_tensor(features(images)).float()
            if not torch.isfinite(x).all():
                raise ValueError(f"attacker space {space!r}: the {key} features contain NaN or infinite values")
            pops[key] = Population(x, images.patient_ids)
        if not torch.isfinite(pred).all():
            raise ValueError(f"attacker space {space!r}: the release's features contain NaN or infinite values")
        res = evaluate_pso(pred[pick], src_pids, pops["train"], pops["control"], pops["heldout"],
                           auditor if space == "auditor" else None, kinds=kinds, weight_factor=p["weight_factor"],
                           verifier_threshold=p["verifier_threshold"], seed=seed, level=p["level"], groups=groups,
                           n_boot=p["n_boot"])
        for kind, fields in res.items():
            prefix = kind if space == "auditor" else f"{space}_{kind}"
            hits[prefix] = fields.pop("hits")
            row.update({f"{prefix}_{k}": v for k, v in fields.items()})
    row.update({f"pso_{k}": row[f"{p['primary']}_{k}"] for k in res_fields(row, p["primary"])})
    row["pso_kind"] = p["primary"]
    row.update(strongest_attacker(hits, p["level"], p["n_boot"], seeds.derive(seed, "privacy", "bootstrap")))
    return row


def attack_summary(result: dict) -> dict:
    """A benchmark table's columns from one ``attack_release`` result: the strongest attacker, its
    risk and corrected upper bound, then every attacker's risk (``"<kind> risk"``)."""
    return {"strongest": result["strongest_attacker"], "strongest risk": result["strongest_risk"],
            "strongest upper bound": result["strongest_risk_hi"],
            **{f"{k} risk": result[f"{k}_risk"] for k in ATTACKER_LABELS if f"{k}_risk" in result}}


def attack_at_weights(release: ImageSet, source_index, train: ImageSet, control: ImageSet, auditor, cfg: dict,
                      factors, heldout: ImageSet | None = None, embed=None, name: str = "release",
                      spaces: dict | None = None) -> list[dict]:
    """``attack_release`` once per predicate weight factor → one row per factor (``"weight_factor"`` first).

    Only ``privacy.weight_factor`` differs between the games: the predicates, populations,
    calibration halves and bootstrap resamples are the same (all seeded by ``seed`` and ``name``),
    so the rows differ by the weight alone. ``factors``: each in (0, 1]. Pass ``embed`` and
    ``spaces`` as caches (``FeatureCache``) to compute each space's features once for all factors.
    """
    embed = embed or EmbeddingCache(auditor, privacy_config(cfg)["batch_size"])
    return [{"weight_factor": float(factor),
             **attack_release(release, source_index, train, control, auditor,
                              {**cfg, "privacy": {**(cfg.get("privacy") or {}), "weight_factor": factor}},
                              heldout=heldout, embed=embed, name=name, spaces=spaces)}
            for factor in factors]


def res_fields(row: dict, prefix: str) -> list[str]:
    """The field names one attacker wrote into ``row``."""
    return [k[len(prefix) + 1:] for k in row if k.startswith(prefix + "_")]


def evaluate_release(release: ImageSet, source_index, train: ImageSet, control: ImageSet, auditor, cfg: dict,
                     heldout: ImageSet | None = None, reference: ImageSet | None = None,
                     embed=None, name: str = "release", spaces: dict | None = None) -> dict:
    """The re-identification audit (``audit.reid_audit``), the pixel nearest-neighbour summary
    and every attacker's singling-out game (``attack_release``) of one release → one table row.

    ``reference``: held-out real images for the nearest-neighbour reference (e.g. the test
    split; None: ``nn_ratio``/``nn_close_*`` are NaN). The other arguments as in
    ``attack_release``. Also returns ``"nn_distances"`` and ``"nn_reference"`` (arrays for the
    figure; not table columns) and ``"weight_source"``.
    """
    p = privacy_config(cfg)
    embed = embed or EmbeddingCache(auditor, p["batch_size"])
    row = attack_release(release, source_index, train, control, auditor, cfg, heldout, embed, name, spaces)
    row["weight_source"] = "heldout" if heldout is not None else "control"
    row.update(reid_audit(release, source_index, train, auditor, k=p["audit_k"], threshold=p["audit_threshold"],
                          level=p["level"], embed=embed, heldout=heldout if heldout is not None else control,
                          false_alarm=p["audit_false_alarm"]))
    dist = pixel_nn_distances(release, train, p["nn_max_size"])
    ref = pixel_nn_distances(reference, train, p["nn_max_size"]) if reference is not None else None
    row.update(nn_summary(dist, ref, p["nn_quantile"], p["level"]))
    row["nn_distances"], row["nn_reference"] = dist, ref
    return row
