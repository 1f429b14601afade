"""Stage ``control_population``: the patients the attack and the auditor need, never trained on.

For PhantomCXR, fresh populations from their own seed streams, same distribution as the
training split: ``control/`` (as many patients as the training split, times
``privacy.control_draws`` = K: K control populations of that size, whose mean is the control
rate), ``weight/`` (threshold calibration and predicate weights) and ``auditor/`` (what the
third-party auditor verifier trains on, ``privacy.roles``). For file-list data the val + test
patients split into ``control/``, ``weight/``, ``negative/`` and ``auditor/``
(``privacy.controls.filelist_populations``).
"""

from __future__ import annotations

import json

from ..data.imageset import ImageSet
from ..io import atomic_write_json
from ..pipeline import Pipeline, StageContext, stage
from ..privacy.controls import control_population, filelist_populations
from ..privacy.roles import auditor_population
from .data import load_splits


@stage("control_population", keys=("seed", "data", "privacy.n_control_patients", "privacy.control_draws",
                                   "privacy.n_weight_patients", "reid.auditor_patients"), deps=("data",), version=3)
def control_population_stage(ctx: StageContext) -> None:
    """Patients never trained on: ``control/``, ``weight/``, ``auditor/`` (and ``negative/`` for file lists)."""
    data_cfg = ctx.config["data"]
    seed = int(ctx.config["seed"])
    splits = load_splits(ctx.pipeline)
    n_train = splits["train"].n_patients
    if data_cfg["source"] == "phantom":
        n_ctrl = (ctx.config["privacy.n_control_patients"] or n_train) * ctx.config["privacy.control_draws"]
        n_wgt = ctx.config["privacy.n_weight_patients"] or n_train
        pops = {"control": control_population(data_cfg, n_ctrl, seed, "control", "ctrl", progress=True),
                "weight": control_population(data_cfg, n_wgt, seed, "weight", "wt", progress=True),
                "auditor": auditor_population(data_cfg, ctx.config["reid.auditor_patients"], seed)}
        note = (f"fresh PhantomCXR populations (own seed streams): control {n_ctrl} patients "
                f"({ctx.config['privacy.control_draws']} disjoint draw(s) of the training patients' {n_train}), weight {n_wgt}, auditor {ctx.config['reid.auditor_patients']}; "
                "negative control = the test split")
    else:
        pops = filelist_populations(splits["val"], splits["test"], seed)
        note = ("file-list data: val + test patients split into control / weight / negative-control / auditor "
                "parts (smaller than the training population; the attack plays on an equally sized subsample "
                "of training patients; one control draw: privacy.control_draws needs fresh PhantomCXR patients)")
    for name, imageset in pops.items():
        imageset.save(ctx.out / name)
    atomic_write_json(ctx.out / "populations.json", {
        "source": data_cfg["source"], "note": note, "n_train_patients": n_train,
        **{f"n_{k}_patients": int(v.n_patients) for k, v in pops.items()},
        **{f"n_{k}_images": len(v) for k, v in pops.items()}})


def load_populations(pipe: Pipeline) -> dict[str, ImageSet]:
    """``{"control", "weight"[, "negative"]}`` ImageSets (computed on first use, then cached)."""
    path = pipe.get("control_population")
    return {p.name: ImageSet.load(p) for p in sorted(path.iterdir()) if p.is_dir()}


def populations_info(pipe: Pipeline) -> dict:
    """``populations.json`` of the control stage: sizes and how the populations were drawn."""
    return json.loads((pipe.get("control_population") / "populations.json").read_text())
