import json

import pandas as pd

from trichotomy_lib import results
from trichotomy_lib.io import atomic_path
import pytest


def test_results_tables_and_figures_land_where_the_profile_says(tmp_path):
    cfg = {"profile": "p", "run_root": str(tmp_path / "runs"), "figures_dir": str(tmp_path / "fig")}
    path = results.save_results(cfg, "00_data", {"n": 3, "auc": float("nan")})
    assert path == tmp_path / "runs" / "p" / "results" / "00_data.json"
    assert json.loads(path.read_text())["results"] == {"n": 3, "auc": None}
    assert results.load_results(cfg, "00_data")["n"] == 3

    df = pd.DataFrame({"auroc": [0.91234, float("nan")]}, index=pd.Index(["a", "b"], name="class"))
    md = results.save_table(cfg, df, "t")
    assert md.read_text().splitlines() == ["| class | auroc |", "|---|---|", "| a | 0.912 |", "| b | – |"]
    assert pd.read_csv(tmp_path / "fig" / "t.csv", index_col=0).loc["a", "auroc"] == pytest.approx(0.91234)


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_gives_a_plain_files_permissions(tmp_path):
    import os
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "shared.csv") as tmp:
            tmp.write_text("a,b\n")
        (tmp_path / "plain.csv").write_text("a,b\n")
    finally:
        os.umask(old)
    mode = (tmp_path / "shared.csv").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.csv").stat().st_mode & 0o777 == 0o640   # not mkstemp's 0o600
