"""``trichotomy reproduce``: run the numbered notebooks in order with papermill.

Each notebook is executed with every parameter of the profile injected (exactly what
``papermill NN_x.ipynb out.ipynb -f notebooks/profiles/<profile>.yaml`` does), and the
executed copy is written to ``<run_root>/<profile>/notebooks/``. Wall time per notebook goes
to ``<run_root>/<profile>/results/timings.json``.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from . import config as config_mod
from .io import atomic_write_json

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")


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
) -> dict[str, float]:
    """Run the selected notebooks; returns {notebook name: seconds}. Raises NotebookFailed."""
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

    notebooks = select_notebooks(list_notebooks(notebooks_dir), only, start)
    timings: dict[str, float] = {}
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
        previous = {}
        if timings_path.exists():
            import json

            previous = json.loads(timings_path.read_text())
        atomic_write_json(timings_path, previous | timings)
    return timings


def main_reproduce(args) -> int:
    try:
        timings = reproduce(args.profile, args.only, args.start, args.data_root, args.out)
    except NotebookFailed as err:
        print(f"\ntrichotomy reproduce FAILED in {err}", file=sys.stderr)
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
