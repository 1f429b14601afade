"""Compute many pipeline stages at once: independent stages side by side on the CPU's cores.

``compute_stages(pipe, names)`` computes ``names`` and every stage upstream of them that is not
cached yet, and returns ``{name: artifact dir}``. A stage is started as soon as all its upstream
stages are cached, in a pool of ``device.job_workers()`` spawned processes (one per core on a
CPU), each with torch on ``cores // workers`` threads. The stages' own networks are small, and
on 2 cores two single-threaded processes get through more work than one process on both threads:
1.32x for two trainings of the default denoiser (``benchmarks/jobs.py --denoiser 500``), 1.41x
for two verifiers, 1.07x for three classifier seeds (``device.job_rounds``). Inside a worker, a stage that runs its own independent jobs
(``jobs.run_jobs``: classifier seeds, defender replicas) runs them one after another, and what
a stage prints (its own progress bars) goes to ``<run_dir>/logs/<stage>-<key>.log``.

What a stage computes depends only on its config keys and upstream artifacts (``pipeline``), so
the order of the stages does not change any result; the thread count can (floating-point order),
and every stage here runs on the same ``cores // workers`` threads in whichever worker takes it.
On a GPU, or with ``TRICHOTOMY_WORKERS=1``, or with one stage to compute, the stages run in this
process one after another, exactly as ``Pipeline.get`` would run them.

Among the stages that are ready, the one with the most stages downstream of it starts first, so
the long chain of the method (encoder → denoiser → releases) is not left waiting. Two processes
never compute the same stage: each worker computes one stage whose upstream stages are all done,
and ``Pipeline.get``'s lock makes a notebook that asks for the same stage wait for it.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from .device import cpu_cores, job_workers
from .pipeline import STAGES, Pipeline

__all__ = ["StageFailed", "compute_stages", "log_path", "stage_order"]


class StageFailed(RuntimeError):
    """A stage raised in a worker process; the message names the stage."""


def _closure(pipe: Pipeline, names) -> list[str]:
    """``names`` and every stage upstream of them, in registration order (unknown names raise)."""
    wanted = set()
    for name in names:
        pipe.stage(name)  # raises KeyError naming the unknown stage
        wanted |= {name, *pipe.upstream(name)}
    return [name for name in STAGES if name in wanted]


def stage_order(pipe: Pipeline, names) -> list[str]:
    """The stages ``compute_stages`` would compute (not cached yet), in a valid order: each after
    its upstream stages, and among the ready ones the one with most stages downstream first."""
    todo = [name for name in _closure(pipe, names) if not pipe.is_cached(name)]
    below = {name: sum(name in pipe.upstream(other) for other in todo) for name in todo}
    done, order = set(), []
    while len(order) < len(todo):
        ready = [n for n in todo if n not in done and all(d in done or d not in todo for d in pipe.stage(n).deps)]
        nxt = max(ready, key=lambda n: (below[n], -todo.index(n)))
        order.append(nxt)
        done.add(nxt)
    return order


def _init_worker(threads: int, modules: tuple[str, ...]) -> None:
    import importlib

    import torch

    torch.set_num_threads(threads)
    os.environ["TRICHOTOMY_WORKERS"] = "1"   # a stage's own jobs run one after another in this worker
    for module in modules:                   # registers the stages (spawned workers start empty)
        importlib.import_module(module)


def log_path(pipe: Pipeline, name: str) -> Path:
    """Where a worker writes what the stage printed (its progress bars, warnings)."""
    return pipe.run_dir / "logs" / f"{pipe.path(name).name}.log"


def _compute_one(cfg: dict, run_dir: str, name: str) -> float:
    """Compute one stage whose upstream stages are cached (a worker's job); returns its seconds.
    Its output goes to ``log_path`` rather than between the parent's progress bars."""
    start = time.perf_counter()
    pipe = Pipeline(cfg, run_dir, verbose=False)
    log = log_path(pipe, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle, redirect_stdout(handle), redirect_stderr(handle):
        pipe.get(name)
    return time.perf_counter() - start


def compute_stages(pipe: Pipeline, names, desc: str = "stages") -> dict[str, Path]:
    """Compute ``names`` and their upstream stages, independent ones side by side (module docstring).

    Args:
        pipe: the pipeline (its config and run directory).
        names: stage names (each must be registered).
        desc: the progress bar's label.

    Returns ``{name: artifact directory}`` for every stage in ``names``. A stage that raises stops
    the scheduling: stages already running finish (their checkpoints stay in ``.partial``), then a
    ``StageFailed`` names the stage, with the worker's traceback attached.
    """
    names = list(names)
    order = stage_order(pipe, names)
    workers = min(job_workers(), len(order))
    if workers <= 1:
        for name in tqdm(order, desc=desc, unit="stage", disable=not order):
            pipe.get(name)
        return {name: pipe.get(name) for name in names}

    threads = max(1, cpu_cores() // workers)
    modules = tuple(sorted({STAGES[name].fn.__module__ for name in order}))
    pending, running, failed = list(order), {}, None
    with tqdm(total=len(order), desc=desc, unit="stage") as bar, \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init_worker, initargs=(threads, modules)) as pool:
        while pending or running:
            if failed is None:
                for name in [n for n in pending if all(pipe.is_cached(d) for d in pipe.stage(n).deps)]:
                    if len(running) == workers:
                        break
                    if pipe.verbose:
                        tqdm.write(f"[pipeline] computing stage {name!r} → {pipe.path(name)} "
                                   f"(worker process, {threads} thread{'s' * (threads > 1)})")
                    running[pool.submit(_compute_one, pipe.cfg, str(pipe.run_dir), name)] = name
                    pending.remove(name)
                if not running:  # nothing can start: an upstream stage is missing (a bug), not a wait
                    raise RuntimeError(f"compute_stages: no stage of {pending} can start")
            bar.set_postfix_str(", ".join(sorted(running.values())))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                if future.exception() is not None and failed is None:
                    failed = (name, future.exception())
                bar.update(1)
            if failed is not None:
                pending.clear()
    if failed is not None:
        raise StageFailed(f"stage {failed[0]!r} raised {type(failed[1]).__name__}: {failed[1]} "
                          f"(its output: {log_path(pipe, failed[0])})") from failed[1]
    return {name: pipe.get(name) for name in names}
