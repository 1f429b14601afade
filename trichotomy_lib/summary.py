"""The summary (notebook 09): every table and figure of a run, traced to its notebook and
pipeline stages, and the README's results section generated from them.

Tracing. A table/figure name is mapped to the notebook whose source calls
``results.save_table``/``save_figure`` with that literal name (parsed from ``notebooks/*.ipynb``);
a notebook to the pipeline stages registered by its stage module (``STAGE_MODULE_NOTEBOOK``),
with each stage's cached artifact directory and ``config.json`` (wall time, parameters) for the
run's config. Numbers come from ``runs/<profile>/results/*.json`` and the Markdown tables the
notebooks wrote — nothing in the generated README text is typed by hand.

README. ``write_readme_results(cfg)`` replaces the text between ``<!-- results:start -->`` and
``<!-- results:end -->`` (both must be present, once, in that order). Only a profile with
``utility.readme: true`` (the default profile) writes the project's README.md; every other
profile writes ``runs/<profile>/README.md`` (a copy of the project's README with the section
filled), so CI never modifies README.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import config as config_mod
from .analysis.privacy import VETO_RULE
from .analysis.utility import CONDITION_ENCODER, DATA_SCALE, GENERATOR_BUDGET, LABEL_GUIDANCE, UTILITY_GAP
from .io import atomic_write_json, atomic_write_text
from .releases import RELEASES, label
from .results import to_markdown

__all__ = ["START", "END", "replace_between_markers", "notebook_outputs", "stage_index", "artifact_index",
           "timings_table", "stage_seconds_table", "results_markdown", "readme_target", "write_readme_results"]

START, END = "<!-- results:start -->", "<!-- results:end -->"

# Stage module (trichotomy_lib/stages/<module>.py) → notebook number that presents its stages.
STAGE_MODULE_NOTEBOOK = {"data": "00", "reid": "01", "classifier": "02", "encoder": "03", "diffusion": "04",
                         "generate": "05", "populations": "06", "privacy": "06", "utility": "07", "fidelity": "07",
                         "sweep": "08"}

# What the README shows, in order: (heading, table name in figures_dir, results notebook).
README_TABLES = [
    ("Utility: train on synthetic, test on real (mean AUROC, points)", "utility_main"),
    ("Privacy: auditor re-identification and singling-out risk", "privacy"),
    ("Diversity is utility: 1, 2 and 4 filtered survivors per source (mean AUROC, points)", "utility_release_size"),
    ("Fidelity and diversity", "utility_fidelity"),
    ("Cross-site generalisation of the real-data classifier (mean AUROC, points)", "utility_cross_site"),
    ("Guidance sweep", "sweep_table"),
]
README_FIGURES = [("Guidance sweep: fidelity vs diversity vs utility vs privacy", "sweep_fd_irs_auroc")]

_SAVE_CALL = re.compile(r"save_(figure|table)\(\s*cfg\s*,\s*[^,()]+(?:\([^()]*\))?\s*,\s*[\"']([^\"']+)[\"']")


# ------------------------------------------------------------------------------ markers
def replace_between_markers(text: str, block: str, start: str = START, end: str = END) -> str:
    """``text`` with everything between the ``start`` and ``end`` marker lines replaced by
    ``block`` (markers kept). Idempotent. ValueError if a marker is missing, repeated, or the
    end comes before the start."""
    n_start, n_end = text.count(start), text.count(end)
    if n_start != 1 or n_end != 1:
        raise ValueError(f"README must contain each marker exactly once: found {start!r} ×{n_start}, {end!r} ×{n_end}")
    i, j = text.index(start), text.index(end)
    if j < i:
        raise ValueError(f"README marker {end!r} comes before {start!r}")
    return text[: i + len(start)] + "\n" + block.strip("\n") + "\n" + text[j:]


# ------------------------------------------------------------------------------ tracing
# tables a benchmark writes into figures/ (measured outside the reproduction; notebooks only read them)
BENCHMARK_OUTPUTS = {GENERATOR_BUDGET: "benchmarks/generator_budget.py", UTILITY_GAP: "benchmarks/utility_gap.py",
                     LABEL_GUIDANCE: "benchmarks/label_guidance.py", VETO_RULE: "benchmarks/veto_rule.py",
                     CONDITION_ENCODER: "benchmarks/condition_encoder.py", DATA_SCALE: "benchmarks/data_scale.py",
                     f"{VETO_RULE}_fresh": "benchmarks/veto_rule.py"}


def _notebooks_dir() -> Path:
    return config_mod.project_root() / "notebooks"


def _notebook_names(notebooks_dir: Path) -> dict[str, str]:
    """{"07": "07_utility", ...} for the notebooks present."""
    from .reproduce import NOTEBOOK_PATTERN

    if not notebooks_dir.is_dir():
        return {}
    return {m.group(1): p.stem for p in sorted(notebooks_dir.iterdir()) if (m := NOTEBOOK_PATTERN.match(p.name))}


def notebook_outputs(notebooks_dir: Path | None = None) -> dict[str, str]:
    """{table/figure name: notebook stem} from the literal names in each notebook's
    ``save_table``/``save_figure`` calls."""
    notebooks_dir = notebooks_dir or _notebooks_dir()
    out = {}
    for number, stem in _notebook_names(notebooks_dir).items():
        nb = json.loads((notebooks_dir / f"{stem}.ipynb").read_text())
        source = "\n".join("".join(c.get("source", "")) for c in nb.get("cells", []) if c.get("cell_type") == "code")
        for _kind, name in _SAVE_CALL.findall(source):
            out.setdefault(name, stem)
    return out


def _stage_notebook(module: str, names: dict[str, str]) -> str:
    number = STAGE_MODULE_NOTEBOOK.get(module.rsplit(".", 1)[-1])
    return names.get(number, f"{number}_?") if number else "?"


def stage_index(cfg: dict, notebooks_dir: Path | None = None) -> pd.DataFrame:
    """Every registered stage for ``cfg``: notebook, cached?, artifact dir, key, seconds."""
    from . import stages  # noqa: F401  (registers every stage)
    from .pipeline import Pipeline, _registry

    pipe = Pipeline(cfg, verbose=False)
    names = _notebook_names(notebooks_dir or _notebooks_dir())
    rows = []
    for name, st in _registry().items():
        path = pipe.path(name)
        conf = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        rows.append({"stage": name, "notebook": _stage_notebook(st.fn.__module__, names),
                     "cached": bool(conf), "artifacts": f"{path.parent.name}/{path.name}",
                     "key": pipe.key(name), "seconds": conf.get("seconds")})
    return pd.DataFrame(rows).set_index("stage")


def stage_seconds_table(cfg: dict, notebooks_dir: Path | None = None) -> pd.DataFrame:
    """Where the stages' time goes: the cached stages' own seconds (each stage's wall time where
    it ran), summed per notebook that shows them, with the notebook's longest stage, + total.
    Stages computed side by side (``schedule``) sum to more than the wall time that computed them."""
    idx = stage_index(cfg, notebooks_dir)
    idx = idx[idx["cached"] & idx["seconds"].notna()]
    rows = {}
    for notebook, group in idx.groupby("notebook", sort=True):
        longest = group["seconds"].astype(float).idxmax()
        rows[notebook] = {"stages": len(group), "seconds": float(group["seconds"].sum()),
                          "longest stage": f"{longest} ({float(group.loc[longest, 'seconds']):.0f} s)"}
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["stages", "seconds", "longest stage"])
    if len(df):
        df.loc["total"] = {"stages": int(df["stages"].sum()), "seconds": df["seconds"].sum(), "longest stage": ""}
    df["minutes"] = df["seconds"] / 60
    df.index.name = "notebook"
    return df


def artifact_index(cfg: dict, notebooks_dir: Path | None = None) -> pd.DataFrame:
    """Every table and figure in ``figures_dir``: its files, notebook and that notebook's cached
    stages (artifact directories)."""
    fig_dir = config_mod.figures_dir(cfg)
    producers = notebook_outputs(notebooks_dir) | BENCHMARK_OUTPUTS
    stages = stage_index(cfg, notebooks_dir)
    cached = stages[stages["cached"]]
    files: dict[str, list[str]] = {}
    if fig_dir.is_dir():
        for p in sorted(fig_dir.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix in (".md", ".csv", ".png", ".pdf"):
                files.setdefault(p.stem, []).append(p.suffix[1:])
    rows = []
    for name, exts in files.items():
        notebook = producers.get(name, "?")
        kind = "table" if {"md", "csv"} & set(exts) else "figure"
        rows.append({"name": name, "kind": kind, "files": ", ".join(exts), "notebook": notebook,
                     "stages": (", ".join(cached.index[cached["notebook"] == notebook]) if notebook != "?" else "")
                               or "–"})
    return pd.DataFrame(rows, columns=["name", "kind", "files", "notebook", "stages"]).set_index("name")


def timings_table(cfg: dict) -> pd.DataFrame:
    """Wall time per notebook from ``results/timings.json`` (``trichotomy reproduce``) + total."""
    path = config_mod.run_dir(cfg) / "results" / "timings.json"
    t = json.loads(path.read_text()) if path.exists() else {}
    df = pd.DataFrame({"seconds": pd.Series(t, dtype=float)}).sort_index()
    if len(df):
        df.loc["total"] = df["seconds"].sum()
    df["minutes"] = df["seconds"] / 60
    df.index.name = "notebook"
    return df


def load_all_results(cfg: dict) -> dict[str, dict]:
    """{notebook: results dict} of every ``runs/<profile>/results/NN_*.json``."""
    path = config_mod.run_dir(cfg) / "results"
    out = {}
    for p in sorted(path.glob("[0-9][0-9]_*.json")) if path.is_dir() else []:
        out[p.stem] = json.loads(p.read_text())["results"]
    return out


# ------------------------------------------------------------------------------ against the committed run
HEADLINE_FILE = "headline.json"


def headline_numbers(cfg: dict) -> dict:
    """This run's headline numbers with their intervals: per utility row the mean AUROC and Δ to
    real (points; intervals over test patients × seeds), per release the strongest attacker's
    risk. ``{"profile", "numbers": {name: {"value", "lo", "hi"}}}``."""
    res = load_all_results(cfg)
    numbers = {}
    for name, r in (res.get("07_utility") or {}).get("rows", {}).items():
        numbers[f"utility: {label(name)}: mean AUROC"] = {
            "value": 100 * r["auroc"]["mean"], "lo": 100 * r["lo"]["mean"], "hi": 100 * r["hi"]["mean"]}
        if name != "real":
            numbers[f"utility: {label(name)}: Δ to real"] = {"value": r["diff_points"], "lo": r["diff_lo"],
                                                              "hi": r["diff_hi"]}
    for name, r in (res.get("06_privacy") or {}).get("releases", {}).items():
        if "strongest_risk" in r:
            numbers[f"privacy: {name}: strongest attacker's risk"] = {
                "value": r["strongest_risk"], "lo": r["strongest_risk_lo"], "hi": r["strongest_risk_hi"]}
    return {"profile": cfg["profile"], "numbers": numbers}


def compare_headline(current: dict, committed: dict | None) -> pd.DataFrame:
    """This run's headline numbers beside the committed run's, and whether each falls inside the
    committed interval (a run on another machine should: the intervals hold the training
    spread). Empty when there is no committed file for the same profile."""
    cols = ["this run", "committed", "committed lo", "committed hi", "inside"]
    if not committed or committed.get("profile") != current["profile"]:
        return pd.DataFrame(columns=cols).rename_axis("number")
    rows = {}
    for name, ref in committed["numbers"].items():
        now = current["numbers"].get(name)
        value = np.nan if now is None else now["value"]
        rows[name] = {"this run": value, "committed": ref["value"], "committed lo": ref["lo"],
                      "committed hi": ref["hi"], "inside": bool(now is not None and ref["lo"] <= value <= ref["hi"])}
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols).rename_axis("number")


def read_headline(path: str | os.PathLike) -> dict | None:
    """A ``headline.json`` written by ``write_headline``; None when absent. Bad content names the file."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        assert isinstance(data["profile"], str) and all({"value", "lo", "hi"} <= set(v) for v in data["numbers"].values())
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise ValueError(f"{path}: not a headline file (profile + numbers with value/lo/hi): {err!r}") from None
    return data


def write_headline(cfg: dict, headline: dict) -> Path:
    """Write ``headline`` to ``<figures_dir>/headline.json`` (atomic)."""
    path = config_mod.figures_dir(cfg) / HEADLINE_FILE
    atomic_write_json(path, headline)
    return path


# ------------------------------------------------------------------------------ README text
def _headline(res: dict) -> list[str]:
    """Sentences built from 07_utility's numbers (nothing typed)."""
    u = res.get("07_utility")
    if not u:
        return ["_Notebook 07 has not run for this profile yet: no utility numbers._"]
    rows, lines = u["rows"], []
    if u.get("headline"):
        lines += [f"**{u['headline']}**", ""]
    real = rows["real"]["auroc"]["mean"]
    lines.append(f"- Real-data classifier: mean AUROC **{100 * real:.1f}** on the real test split.")
    for name in RELEASES:  # the main table's order
        if name not in rows:
            continue
        r = rows[name]
        lines.append(f"- {label(name)}: mean AUROC **{100 * r['auroc']['mean']:.1f}**, "
                     f"Δ to real {r['diff_points']:+.1f} points (95% CI {r['diff_lo']:+.1f} to {r['diff_hi']:+.1f}).")
    return lines


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def results_markdown(cfg: dict, base_dir: Path, notebooks_dir: Path | None = None) -> str:
    """The README's results section for ``cfg``'s run; links relative to ``base_dir``."""
    fig_dir = config_mod.figures_dir(cfg)
    res = load_all_results(cfg)
    stages = stage_index(cfg, notebooks_dir)
    producers = notebook_outputs(notebooks_dir)
    parts = [f"_Generated by `notebooks/09_summary.ipynb` (`trichotomy_lib.summary`) from the "
             f"`{cfg['profile']}` run (seed {cfg['seed']}, {int(stages['cached'].sum())} cached pipeline stages). "
             "Do not edit by hand._", "", "### Headline", "", *_headline(res)]
    for heading, name in README_TABLES:
        md = fig_dir / f"{name}.md"
        source = producers.get(name, "?")
        parts += ["", f"### {heading}", ""]
        if md.exists():
            parts += [md.read_text().strip(), "", f"<sub>`{_rel(md, base_dir)}` · notebook `{source}`</sub>"]
        else:
            parts.append(f"_Not produced yet (notebook `{source}`)._")
    for heading, name in README_FIGURES:
        png = fig_dir / f"{name}.png"
        parts += ["", f"### {heading}", ""]
        parts.append(f"![{heading}]({_rel(png, base_dir)})" if png.exists() else
                     f"_Not produced yet (notebook `{producers.get(name, '?')}`)._")
    timings = timings_table(cfg)
    parts += ["", "### Run time per notebook (`trichotomy reproduce`)", ""]
    if len(timings):
        parts.append(to_markdown(timings, ".1f").strip())
    else:
        parts.append("_No `results/timings.json` yet (run `trichotomy reproduce`)._")
    own = stage_seconds_table(cfg, notebooks_dir)
    if len(own):
        parts += ["", "The pipeline stages' own seconds, by the notebook that shows them (each stage's wall time "
                  "where it ran; stages computed side by side add up to more than the time that computed them):",
                  "", to_markdown(own, ".1f").strip()]
    index = artifact_index(cfg, notebooks_dir)
    parts += ["", "<details><summary>Every table and figure, with the notebook and pipeline stages that produced it"
              "</summary>", ""]
    if len(index):
        parts.append(to_markdown(index).strip())
    else:
        parts.append("_No figures yet._")
    parts += ["", "</details>"]
    return "\n".join(parts) + "\n"


def readme_target(cfg: dict) -> Path:
    """Project README.md when ``utility.readme`` is true (default profile), else the run's copy."""
    from .evaluation.utility import utility_config

    if utility_config(cfg)["readme"]:
        return config_mod.project_root() / "README.md"
    return config_mod.run_dir(cfg) / "README.md"


def write_readme_results(cfg: dict, readme_path: str | os.PathLike | None = None,
                         notebooks_dir: Path | None = None) -> Path:
    """Replace the results section of ``readme_path`` (default ``readme_target(cfg)``) with
    ``results_markdown`` — atomically; the file is untouched if the markers are missing.

    A missing run-directory copy is first created from the project's README.md.
    """
    path = Path(readme_path) if readme_path is not None else readme_target(cfg)
    if not path.exists():
        project = config_mod.project_root() / "README.md"
        if readme_path is not None or not project.exists():
            raise FileNotFoundError(f"{path}: README not found")
        text = project.read_text()
    else:
        text = path.read_text()
    new = replace_between_markers(text, results_markdown(cfg, path.parent, notebooks_dir))
    atomic_write_text(path, new)
    return path
