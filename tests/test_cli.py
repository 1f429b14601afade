"""`trichotomy reproduce`: order, selection, parameters injected, failures named, exit codes."""

import json

import nbformat
import pytest
import yaml

from trichotomy_lib import cli, config, reproduce


def _notebook(path, body):
    params = "\n".join(f"{key} = None" for key in config.TOP_LEVEL_KEYS)
    cells = [nbformat.v4.new_code_cell(params), nbformat.v4.new_code_cell(body)]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def stages_first(monkeypatch):
    """The configs ``reproduce`` computed the stages of before the notebooks (faked: 1.5 s)."""
    calls = []
    monkeypatch.setattr(reproduce, "_compute_stages", lambda cfg: calls.append(cfg) or 1.5)
    return calls


@pytest.fixture
def project(tmp_path, stages_first):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    log = tmp_path / "log.txt"
    for name in ("00_first", "01_second", "02_third"):
        _notebook(notebooks / f"{name}.ipynb", f"open({str(log)!r}, 'a').write('{name} ' + str(seed) + ' ' + str(data_root) + '\\n')")
    (notebooks / "notes.ipynb").write_text("not a numbered notebook, never run")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(yaml.safe_dump({"profile": "tiny", "seed": 5, "run_root": str(tmp_path / "runs"), "data": {}}))
    return notebooks, profile, log


def test_runs_numbered_notebooks_in_order_with_profile_parameters(project, tmp_path, stages_first):
    notebooks, profile, log = project
    timings = reproduce.reproduce(str(profile), notebooks_dir=notebooks, data_root=str(tmp_path))
    assert list(timings) == [reproduce.STAGES_TIMING, "00_first", "01_second", "02_third"]
    assert timings[reproduce.STAGES_TIMING] == 1.5
    assert [(c["seed"], c["data_root"]) for c in stages_first] == [(5, str(tmp_path))]  # the notebooks' config
    assert log.read_text().splitlines() == [f"{n} 5 {tmp_path}" for n in ("00_first", "01_second", "02_third")]
    executed = tmp_path / "runs" / "tiny" / "notebooks"
    assert sorted(p.name for p in executed.iterdir()) == ["00_first.ipynb", "01_second.ipynb", "02_third.ipynb"]
    saved = json.loads((tmp_path / "runs" / "tiny" / "results" / "timings.json").read_text())
    assert set(saved) == set(timings)


def test_only_and_from_select_notebooks(project, stages_first):
    notebooks, profile, log = project
    reproduce.reproduce(str(profile), only=["1"], notebooks_dir=notebooks)
    reproduce.reproduce(str(profile), start="01", notebooks_dir=notebooks)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["01_second", "01_second", "02_third"]
    assert stages_first == []  # a partial run computes only what its notebooks ask for
    timings = reproduce.reproduce(str(profile), notebooks_dir=notebooks, stages_first=False)
    assert reproduce.STAGES_TIMING not in timings and stages_first == []
    with pytest.raises(ValueError, match="no notebook numbered '07'"):
        reproduce.select_notebooks(reproduce.list_notebooks(notebooks), only=["07"])


def test_failure_names_notebook_and_cell_and_stops(project, capsys, monkeypatch):
    notebooks, profile, log = project
    _notebook(notebooks / "01_second.ipynb", "raise ValueError('broken on purpose')")
    monkeypatch.setattr(reproduce, "list_notebooks", lambda _=None: sorted(notebooks.glob("0*.ipynb")))
    code = cli.main(["reproduce", "--profile", str(profile)])
    err = capsys.readouterr().err
    assert code == 1
    assert "01_second.ipynb" in err and "cell In [3]" in err  # In [1] parameters, In [2] injected by papermill and "broken on purpose" in err
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["00_first"]  # 02 never ran


def test_bad_profile_exits_2_with_message(capsys):
    assert cli.main(["reproduce", "--profile", "no_such_profile"]) == 2
    assert "profile not found" in capsys.readouterr().err


def test_builtin_notebooks_are_numbered_and_unique():
    numbers = [p.name[:2] for p in reproduce.list_notebooks()]
    assert numbers and numbers == sorted(set(numbers))


def test_stages_in_notebooks_flag_and_a_failing_stage_exit_1(project, capsys, monkeypatch):
    from trichotomy_lib.schedule import StageFailed

    notebooks, profile, log = project
    assert cli.build_parser().parse_args(["reproduce"]).stages_first is True
    assert cli.build_parser().parse_args(["reproduce", "--stages-in-notebooks"]).stages_first is False

    def fail(cfg):
        raise StageFailed("stage 'diffusion' raised ValueError: broken on purpose")

    monkeypatch.setattr(reproduce, "_compute_stages", fail)
    monkeypatch.setattr(reproduce, "list_notebooks", lambda _=None: sorted(notebooks.glob("0*.ipynb")))
    assert cli.main(["reproduce", "--profile", str(profile)]) == 1
    assert "stage 'diffusion' raised ValueError: broken on purpose" in capsys.readouterr().err
    assert not log.exists()  # no notebook ran
    assert cli.main(["reproduce", "--profile", str(profile), "--stages-in-notebooks"]) == 0
    assert len(log.read_text().splitlines()) == 3


def test_a_whole_run_starts_timings_afresh(project, tmp_path):
    notebooks, profile, log = project
    timings_path = tmp_path / "runs" / "tiny" / "results" / "timings.json"
    reproduce.reproduce(str(profile), notebooks_dir=notebooks)
    reproduce.reproduce(str(profile), notebooks_dir=notebooks, stages_first=False)
    assert reproduce.STAGES_TIMING not in json.loads(timings_path.read_text())  # not counted twice
    reproduce.reproduce(str(profile), notebooks_dir=notebooks)
    reproduce.reproduce(str(profile), only=["1"], notebooks_dir=notebooks)
    assert reproduce.STAGES_TIMING in json.loads(timings_path.read_text())  # a partial run keeps the rest


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_stages_computed_first_are_the_ones_the_notebooks_read(profile, tmp_path):
    """The config ``reproduce`` computes the stages with gives every stage the key the notebooks'
    own config (papermill's parameters) gives it: nothing is computed twice."""
    from trichotomy_lib import stages
    from trichotomy_lib.pipeline import Pipeline

    params = config.load_profile(profile)
    first = Pipeline(config.resolve(profile, params), run_dir=tmp_path, verbose=False)
    notebook_params = json.loads(json.dumps(params))  # papermill passes the parameters as JSON
    in_notebook = Pipeline(config.from_notebook({**{k: None for k in config.TOP_LEVEL_KEYS}, **notebook_params}),
                           run_dir=tmp_path, verbose=False)
    names = stages.reproduction_stages(first.cfg)
    assert names == stages.reproduction_stages(in_notebook.cfg)
    assert [first.key(n) for n in names] == [in_notebook.key(n) for n in names]
