"""Summary: README marker replacement (idempotent, atomic, strict) and artifact tracing."""

import json

import pandas as pd
import pytest

from trichotomy_lib import results, summary


def make_cfg(tmp_path, readme=False):
    return {"profile": "t", "seed": 7, "run_root": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "figs"),
            "data": {}, "utility": {"readme": readme}}


def notebook(tmp_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    cell = {"cell_type": "code", "source": ['results.save_table(cfg, main, "utility_main")\n',
                                            "results.save_figure(cfg, fig, 'sweep_fd_irs_auroc')\n"]}
    (nbdir / "07_utility.ipynb").write_text(json.dumps({"cells": [cell]}))
    return nbdir


README = "# T\n\nintro\n\n<!-- results:start -->\nold text\n<!-- results:end -->\n\n## After\n"


def test_replace_between_markers_idempotent_and_strict():
    once = summary.replace_between_markers(README, "NEW\n")
    assert "old text" not in once and "NEW" in once and once.endswith("## After\n") and once.startswith("# T")
    assert summary.replace_between_markers(once, "NEW\n") == once
    for bad in ("no markers", README.replace(summary.END, ""), README + summary.START,
                f"{summary.END}\n{summary.START}"):
        with pytest.raises(ValueError, match="marker"):
            summary.replace_between_markers(bad, "x")


def test_write_readme_results_generated_traced_and_atomic(tmp_path):
    cfg, nbdir = make_cfg(tmp_path), notebook(tmp_path)
    results.save_table(cfg, pd.DataFrame({"mean AUROC": ["84.1 [80.0, 88.0]"]}, index=["real data"]), "utility_main")
    results.save_results(cfg, "07_utility", {"rows": {"real": {"auroc": {"mean": 0.8412}}, "diadm_filter": {
        "auroc": {"mean": 0.8301}, "diff_points": -1.11, "diff_lo": -2.5, "diff_hi": 0.25}},
        "labels": {"real": "real data", "diadm_filter": "DiADM + filter"}})
    (tmp_path / "runs" / "t" / "results" / "timings.json").write_text(json.dumps({"07_utility": 90.0, "00_data": 30.0}))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    summary.write_readme_results(cfg, readme, nbdir)
    text = readme.read_text()
    assert "84.1 [80.0, 88.0]" in text                     # the table the notebook wrote
    assert "**84.1**" in text and "-1.1 points" in text and "-2.5 to +0.2" in text  # numbers from results JSON
    assert "| total | 120.0 | 2.0 |" in text                # timing breakdown with total
    assert "07_utility" in text and "Not produced yet" in text  # traced; missing figure named
    assert text.count(summary.START) == 1 and text.endswith("## After\n")
    summary.write_readme_results(cfg, readme, nbdir)
    assert readme.read_text() == text                     # idempotent
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError):
        summary.write_readme_results(cfg, readme, nbdir)
    assert readme.read_text() == "# no markers\n"         # untouched on error
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".README")]  # no temp files left


def test_artifact_index_and_target(tmp_path):
    cfg, nbdir = make_cfg(tmp_path), notebook(tmp_path)
    results.save_table(cfg, pd.DataFrame({"a": [1]}), "utility_main")
    results.save_table(cfg, pd.DataFrame({"a": [1]}), "orphan")
    results.save_table(cfg, pd.DataFrame({"a": [1]}), "generator_budget")
    results.save_table(cfg, pd.DataFrame({"a": [1]}), "label_guidance")
    index = summary.artifact_index(cfg, nbdir)
    assert index.loc["utility_main", "notebook"] == "07_utility" and index.loc["utility_main", "files"] == "csv, md"
    assert index.loc["orphan", "notebook"] == "?" and index.loc["orphan", "stages"] == "–"
    assert index.loc["generator_budget", "notebook"] == "benchmarks/generator_budget.py"
    assert index.loc["generator_budget", "stages"] == "–"
    assert index.loc["label_guidance", "notebook"] == "benchmarks/label_guidance.py"
    stages = summary.stage_index(cfg, nbdir)
    assert stages.loc["utility_real", "notebook"] == "07_utility"
    assert stages.loc["sweep", "notebook"] == "08_?"       # 08 not in this notebooks dir
    assert not stages["cached"].any()
    assert summary.readme_target(cfg) == tmp_path / "runs" / "t" / "README.md"
    assert summary.readme_target(make_cfg(tmp_path, readme=True)).name == "README.md"
    assert summary.readme_target(make_cfg(tmp_path, readme=True)).parent != tmp_path / "runs" / "t"


def test_compare_headline_flags_numbers_outside_the_committed_interval(tmp_path):
    from trichotomy_lib.summary import compare_headline, read_headline

    committed = {"profile": "default", "numbers": {"a": {"value": 70.0, "lo": 69.0, "hi": 71.0},
                                                   "b": {"value": 0.02, "lo": 0.0, "hi": 0.05},
                                                   "c": {"value": 1.0, "lo": 0.5, "hi": 1.5}}}
    now = {"profile": "default", "numbers": {"a": {"value": 70.6, "lo": 69.5, "hi": 71.6},
                                             "b": {"value": 0.07, "lo": 0.03, "hi": 0.1}}}
    table = compare_headline(now, committed)
    assert table["inside"].to_dict() == {"a": True, "b": False, "c": False}   # c missing from this run
    assert compare_headline({**now, "profile": "smoke"}, committed).empty     # other profile: no reference
    assert compare_headline(now, None).empty
    path = tmp_path / "headline.json"
    assert read_headline(path) is None
    path.write_text('{"profile": "default", "numbers": {"a": {"value": 1}}}')
    with pytest.raises(ValueError, match="headline.json"):
        read_headline(path)


def test_stage_seconds_sum_per_notebook_with_the_longest_stage(tmp_path):
    from trichotomy_lib import stages  # noqa: F401  (registers the stages)
    from trichotomy_lib.pipeline import Pipeline

    cfg, nbdir = make_cfg(tmp_path), notebook(tmp_path)
    assert len(summary.stage_seconds_table(cfg, nbdir)) == 0  # nothing cached yet
    pipe = Pipeline(cfg, verbose=False)
    for name, seconds in (("utility_real", 60.0), ("utility_edm_class", 90.5), ("data", 12.0)):
        pipe.path(name).mkdir(parents=True)
        (pipe.path(name) / "config.json").write_text(json.dumps({"seconds": seconds}))
    table = summary.stage_seconds_table(cfg, nbdir)
    assert table.loc["07_utility", "seconds"] == 150.5 and table.loc["07_utility", "stages"] == 2
    assert table.loc["07_utility", "longest stage"] == "utility_edm_class (90 s)"
    assert table.loc["00_?", "seconds"] == 12.0           # 00 not in this notebooks dir
    assert table.loc["total", "seconds"] == 162.5 and table.loc["total", "stages"] == 3
    assert "| 07_utility | 2 | 150.5 | utility_edm_class (90 s) | 2.5 |" in summary.results_markdown(cfg, tmp_path, nbdir)
