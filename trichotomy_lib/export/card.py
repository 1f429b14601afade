"""The dataset card (``README.md``) and its machine-readable twin (``privacy.json``).

The card is written for the person who decides whether the data may be shared: what the
images are, how they were made, what the privacy audit measured and concluded, how useful
the data is, and what the audit does not cover. It uses Hugging Face's YAML front matter so
the folder can be uploaded to the Hub as it is.
"""

from __future__ import annotations

import json

import pandas as pd

from ..data.imageset import LABELS
from ..results import to_markdown
from .tables import THIS_RELEASE
from .verdict import Verdict, format_number, format_weight

__all__ = ["FORMAT", "render_card", "privacy_document"]

FORMAT = "trichotomy-export/1"   # marks a folder written by ``export_release``
FAILED_BANNER = "WARNING: THE PRIVACY AUDIT FAILED. THIS DATA IS NOT SHOWN TO BE PSO-SECURE."

METHOD = (
    "Every image was drawn from a diffusion model (EDM formulation, Karras et al. 2022) trained on real "
    "chest radiographs. The model is *pseudo-conditioned* (DiADM, Dombrowski & Kainz 2025): instead of a "
    "class label it is conditioned on a feature embedding of one real training image, which keeps the "
    "synthetic set as varied as the real one (the settings below say whether noise was added to that "
    "embedding and whether the image's finding labels were given beside it). An image conditioned on a patient's scan can keep that "
    "patient's identity, so every candidate image went through a re-identification filter before release: "
    "a candidate was discarded when a patient-verification network judged it to show the source patient, "
    "or when it lay closer to a training image (in pixels or in the conditioning encoder's features) than "
    "unseen real images do. Among the candidates that passed, the one whose predicted findings best "
    "matched the source image was kept; sources with no passing candidate were skipped. Each image carries "
    "the 8 finding labels of the real image it was conditioned on."
)

PRIVACY_METHOD = (
    "The audit is a predicate-singling-out attack (Cohen & Nissim, PNAS 2020), measured the way Anonymeter "
    "measures it for tables (Giomi et al., PETS 2023). Each attacker "
    "turns a released image into a *predicate*: a rule that a real patient's scans either satisfy or not, "
    "of small *weight* (the chance that a random patient satisfies it). The attack succeeds when the "
    "predicate picks out exactly one patient. The **attack rate** is how often that happens among the "
    "patients the generator was trained on; the **control rate** is how often it happens among as many "
    "patients the generator never saw (averaged over several such populations when the audit draws several). **Risk** = (attack − control) / (1 − control): 0 means the release "
    "singles out trained-on patients no more often than unseen ones, 1 means it always does."
)


def _ci(value: float, lo: float, hi: float, fmt: str = ".3f", scale: float = 1.0, signed: bool = False) -> str:
    f = ("+" if signed else "") + fmt
    return f"{format(scale * value, f)} [{format(scale * lo, f)}, {format(scale * hi, f)}]"


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _front_matter(pretty_name: str, n: int, failed: bool) -> str:
    lines = ["---"]
    if failed:
        lines.append(f"# {FAILED_BANNER}")
    lines += ["license: other  # placeholder: the data holder must choose the licence before sharing",
              "task_categories:", "- image-classification", "size_categories:", f"- {size_category(n)}",
              "tags:", "- medical", "- chest-x-ray", "- synthetic"]
    if failed:
        lines.append("- privacy-audit-failed")
    lines += [f"pretty_name: {json.dumps(pretty_name, ensure_ascii=False)}", "---", ""]
    return "\n".join(lines)


def _privacy_table(attackers: list[dict], pct: str) -> str:
    rows = []
    for r in attackers:
        weight = format_weight(r["weight"])
        if "weight_lo" in r:
            weight += f" [{format_weight(r['weight_lo'])}, {format_weight(r['weight_hi'])}]"
        rows.append({"attacker": r["attacker"], "predicate weight": weight,
                     f"attack rate [{pct} % CI]": _ci(r["attack_rate"], r["attack_lo"], r["attack_hi"]),
                     f"control rate [{pct} % CI]": _ci(r["control_rate"], r["control_lo"], r["control_hi"]),
                     f"risk [{pct} % CI]": _ci(r["risk"], r["risk_lo"], r["risk_hi"]),
                     "predicates": str(r.get("n_predicates", "–")), "patients": str(r.get("n_population", "–"))})
    return to_markdown(pd.DataFrame(rows), index=False)


def _utility_table(utility: list[dict], pct: str) -> str:
    rows = []
    for r in utility:
        delta = _ci(r["delta_points"], r["delta_lo"], r["delta_hi"], ".1f", signed=True) if "delta_points" in r else "–"
        rows.append({"training set": r["training_set"],
                     f"mean AUROC × 100 [{pct} % CI]": _ci(r["mean_auroc"], r["mean_auroc_lo"], r["mean_auroc_hi"],
                                                           ".1f", 100.0),
                     "Δ to real data (points)": delta, "training images": str(r.get("n_train", "–")),
                     "tested on": r.get("test_set", "real test images")})
    return to_markdown(pd.DataFrame(rows), index=False)


def _settings_table(settings: dict) -> str:
    if not settings:
        return "_No settings were recorded._\n"
    rows = [{"setting": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in settings.items()]
    return to_markdown(pd.DataFrame(rows), index=False)


def render_card(*, n: int, image_shape: tuple[int, int], label_counts: dict[str, int], attackers: list[dict],
                utility: list[dict], settings: dict, verdict: Verdict, pretty_name: str,
                source_dataset: str | None, forbidden_checked: int = 0) -> str:
    """The ``README.md`` text. All inputs are checked plain data (``tables``, ``verdict``).

    ``forbidden_checked``: how many identifying strings the finished folder is scanned for
    (the export is refused if one is found, so the card's statement holds when it ships).
    """
    failed = not verdict.passed
    pct = verdict.percent
    source = f"the {source_dataset} dataset" if source_dataset else "a real chest-radiograph dataset"
    out = [_front_matter(pretty_name + (" — PRIVACY AUDIT FAILED" if failed else ""), n, failed)]
    if failed:
        out += [f"**{FAILED_BANNER}**", "",
                "It was exported only because the research override `allow_failed_audit=True` was used. "
                "Do not share it as anonymous data.", "", f"Reason: {verdict.reason}.", ""]
    h, w = image_shape
    out += [f"# {pretty_name}", "",
            f"{n} synthetic chest radiographs ({h} × {w} pixels, 8-bit grayscale PNG), each with 8 finding "
            f"labels, generated from a model trained on {source}. No real image is included. Nothing in this "
            "folder refers to a real image or patient: file names are random, rows are in random order, and no "
            "patient ids, source file names, sample indices or seeds were exported." + (
                f" Before release, every byte of every file was scanned for {forbidden_checked} identifying strings "
                "of the training data (such as patient ids and file names); none was found." if forbidden_checked
                else ""), "",
            "## Verdict", "", verdict.sentence, "",
            f"Rule applied before export: the largest upper {pct} % confidence bound of singling-out risk over "
            f"all attackers must be at most {format_number(verdict.bound)}; an export that fails it is refused.",
            "", "## How the images were made", "", METHOD, "", "Generator and filter settings:", "",
            _settings_table(settings), "## Privacy audit", "", PRIVACY_METHOD, "",
            f"Intervals are {pct} % confidence intervals. The strongest attacker is the one with the largest "
            "upper bound of risk.", "", _privacy_table(attackers, pct)]
    notes = [f"- {r['attacker']}: {r['warning']}" for r in attackers if "warning" in r]
    if notes:
        out += ["Notes from the audit:", "", *notes, ""]
    mine = next(r for r in utility if r["training_set"] == THIS_RELEASE)
    tested = f"on {mine['test_set']}" if "test_set" in mine else "on real, held-out test images"
    sentence = (f"A classifier trained on this release alone reaches a mean AUROC over the 8 findings of "
                f"{_ci(mine['mean_auroc'], mine['mean_auroc_lo'], mine['mean_auroc_hi'], '.1f', 100.0)} "
                f"(× 100, {pct} % CI) {tested}")
    if "delta_points" in mine:
        delta = _ci(mine["delta_points"], mine["delta_lo"], mine["delta_hi"], ".1f", signed=True)
        sentence += f"; its difference to the same classifier trained on real data is {delta} AUROC points"
    out += ["## Utility", "", sentence + ".", "", _utility_table(utility, pct)]
    counts = pd.DataFrame([{"label": k, "images": str(v)} for k, v in label_counts.items()])
    out += ["## Files", "",
            "- `train/<random name>.png`: the images (no metadata chunks: no text, time or camera data).",
            "- `train/metadata.csv`: `file_name` and one 0/1 column per finding: " +
            ", ".join(f"`{c}`" for c in LABELS) + ".",
            "- `privacy.json`: the verdict, the privacy and utility tables and the settings, machine-readable.", "",
            "Images per label (an image can have several):", "", to_markdown(counts, index=False),
            "## Loading", "", "```python", "from datasets import load_dataset", "",
            'ds = load_dataset("imagefolder", data_dir="path/to/this/folder")', "```", "",
            "## What the audit does not cover", "",
            "- Only the attackers listed above were tested; a stronger attack might do better.",
            "- Singling-out security does not compose: several releases drawn from the same patients, or this "
            "release combined with other data about them, are not covered by this audit.",
            "- The labels are those of the real images the model was conditioned on; no clinician has read "
            "these synthetic images. They are for research and method development, not for diagnosis.",
            "- The licence above is a placeholder: the holder of the real data must set it, in line with the "
            "terms under which the real data was obtained.", "",
            "## Reference", "",
            "Dombrowski & Kainz, *Enabling PSO-Secure Synthetic Data Sharing Using Diversity-Aware Diffusion "
            "Models*, arXiv:2506.17975 (2025).", ""]
    return "\n".join(out)


def privacy_document(*, n: int, image_shape: tuple[int, int], label_counts: dict[str, int], attackers: list[dict],
                     utility: list[dict], settings: dict, verdict: Verdict, source_dataset: str | None,
                     forbidden_checked: int = 0) -> dict:
    """The ``privacy.json`` content: the card's numbers, machine-readable (AUROC as fractions)."""
    return {
        "format": FORMAT, "n_images": n, "image_size": list(image_shape), "labels": list(LABELS),
        "label_counts": label_counts, "source_dataset": source_dataset, "forbidden_tokens_checked": forbidden_checked,
        "exported_despite_failed_audit": not verdict.passed, "verdict": verdict.to_dict(),
        "attackers": attackers, "utility": utility, "settings": settings,
    }
