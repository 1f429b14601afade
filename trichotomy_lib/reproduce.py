"""``trichotomy reproduce``: run the numbered notebooks in order with papermill.

Each notebook is executed with every parameter of the profile injected (exactly what
``papermill NN_x.ipynb out.ipynb -f notebooks/profiles/<profile>.yaml`` does), and the
executed copy is written to ``<run_root>/<profile>/notebooks/``. Wall time per notebook goes
to ``<run_root>/<profile>/results/timings.json``.

A whole reproduction (every notebook) first computes every pipeline stage the
notebooks read, independent stages side by side on the CPU's cores (``schedule``), and the
notebooks then read them from the cache; ``timings.json`` holds that step's seconds too.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from . import config as config_mod
from .io import atomic_write_json
from .schedule import StageFailed

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")
# timings.json's entry for the stages computed before the notebooks (its name sorts first)
STAGES_TIMING = "00 pipeline stages (side by side)"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the cell."""


def list_notebooks(notebooks_dir: Path | None = None) -> list[Path]:
    """``notebooks/NN_*.ipynb`` in numeric order."""
    notebooks_dir = notebooks_dir or config_mod.project_root() / "notebooks"
    found = [p for p in notebooks_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def select_notebooks(notebooks: list[Path], only: list[str] | None = None, start: str | None = None) -> list[Path]:
    """Filter by ``--only NN [NN ...]`` and/or ``--from NN`` (two-digit prefixes)."""
    numbers = [NOTEBOOK_PATTERN.match(p.name).group(1) for p in notebooks]
    for wanted in (only or []) + ([start] if start else []):
        if wanted.zfill(2) not in numbers:
            raise ValueError(f"no notebook numbered {wanted!r}; have {numbers}")
    chosen = notebooks
    if start:
        chosen = [p for p, n in zip(notebooks, numbers) if n >= start.zfill(2)]
    if only:
        keep = {n.zfill(2) for n in only}
        chosen = [p for p in chosen if p.name[:2] in keep]
    return chosen


def _failure_message(notebook: Path, output: Path, err) -> str:
    cell = getattr(err, "exec_count", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f"cell In [{cell}]" if cell is not None else "a cell"
    return f"{notebook.name}: {where} raised {ename}: {evalue}\n  executed notebook with the traceback: {output}"


def reproduce(
    profile: str = "default",
    only: list[str] | None = None,
    start: str | None = None,
    data_root: str | None = None,
    out: str | None = None,
    notebooks_dir: Path | None = None,
    stages_first: bool = True,
) -> dict[str, float]:
    """Run the selected notebooks; returns {notebook name: seconds}. Raises NotebookFailed
    (or StageFailed).

    ``stages_first``: for a whole run (every notebook selected), compute every stage the
    notebooks read before them, side by side (``schedule``); its seconds are the
    ``STAGES_TIMING`` entry. False: each notebook computes what it asks for, in its own process."""
    import papermill
    from tqdm.auto import tqdm

    params = config_mod.load_profile(profile)
    if data_root is not None:
        params["data_root"] = str(Path(data_root).resolve())
    if out is not None:
        params["run_root"] = str(Path(out).resolve())
    cfg = config_mod.resolve(profile, params)
    run_dir = config_mod.run_dir(cfg)
    executed_dir = run_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    timings_path = run_dir / "results" / "timings.json"

    every = list_notebooks(notebooks_dir)
    notebooks = select_notebooks(every, only, start)
    whole = notebooks == every   # a whole run starts timings.json afresh; a partial one updates its notebooks
    if whole and timings_path.exists():
        timings_path.unlink()
    timings: dict[str, float] = {}
    if stages_first and whole:
        timings[STAGES_TIMING] = _compute_stages(cfg)
        _write_timings(timings_path, timings)
    bar = tqdm(notebooks, desc=f"reproduce[{cfg['profile']}]", unit="notebook")
    for notebook in bar:
        bar.set_postfix_str(notebook.name)
        output = executed_dir / notebook.name
        begin = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(output),
                parameters=params,
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=True,
            )
        except papermill.PapermillExecutionError as err:
            raise NotebookFailed(_failure_message(notebook, output, err)) from None
        timings[notebook.stem] = round(time.perf_counter() - begin, 1)
        _write_timings(timings_path, timings)
    return timings


def _write_timings(path: Path, timings: dict[str, float]) -> None:
    """Merge ``timings`` into ``path`` (a rerun of some notebooks keeps the others' seconds)."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    atomic_write_json(path, previous | timings)


def _compute_stages(cfg: dict) -> float:
    """Compute every stage the notebooks read, side by side (``schedule.compute_stages``); seconds."""
    from . import stages
    from .pipeline import Pipeline
    from .schedule import compute_stages

    begin = time.perf_counter()
    pipe = Pipeline(cfg)
    compute_stages(pipe, stages.reproduction_stages(pipe.cfg), desc=f"stages[{cfg['profile']}]")
    return round(time.perf_counter() - begin, 1)


def main_reproduce(args) -> int:
    try:
        timings = reproduce(args.profile, args.only, args.start, args.data_root, args.out,
                            stages_first=getattr(args, "stages_first", True))
    except NotebookFailed as err:
        print(f"\ntrichotomy reproduce FAILED in {err}", file=sys.stderr)
        return 1
    except StageFailed as err:
        print(f"\ntrichotomy reproduce FAILED: {err}", file=sys.stderr)
        return 1
    except (config_mod.ConfigError, ValueError) as err:
        print(f"trichotomy reproduce: {err}", file=sys.stderr)
        return 2
    total = sum(timings.values())
    print("\nnotebook                     seconds")
    for name, seconds in timings.items():
        print(f"{name:<28} {seconds:8.1f}")
    print(f"{'total':<28} {total:8.1f}")
    return 0
