"""Compute many pipeline stages at once: independent stages side by side on the CPU's cores.

``compute_stages(pipe, names)`` computes ``names`` and every stage upstream of them that is not
cached yet, and returns ``{name: artifact dir}``. A stage is started as soon as all its upstream
stages are cached, in a pool of ``stage_workers()`` spawned processes (on a CPU: one per core, at
most ``MAX_STAGE_WORKERS``), each with torch and the BLAS libraries on ``cores // workers``
threads. The stages' own networks are small, and on 2 cores two single-threaded processes get
through more work than one process on both threads: 1.32x for two trainings of the default
denoiser (``benchmarks/jobs.py --denoiser 500``), 1.41x for two verifiers, 1.07x for three
classifier seeds (``device.job_rounds``). Inside a worker, a stage that runs its own independent
jobs (``jobs.run_jobs``: classifier seeds, defender replicas) runs them one after another, and
what a stage prints (its own progress bars, and the traceback of a stage that raises) goes to
``<run_dir>/logs/<stage>-<key>.log``.

What a stage computes depends only on its config keys and upstream artifacts (``pipeline``), so
the order of the stages does not change any result; the thread count can (floating-point order),
and every stage here runs on the same ``cores // workers`` threads, however many stages are left
and whichever worker takes it. On a GPU, or with ``TRICHOTOMY_WORKERS=1``, the stages run in
this process one after another, exactly as ``Pipeline.get`` would run them.

Among the stages that are ready, the one with the most stages downstream of it starts first, so
the long chain of the method (encoder → denoiser → releases) is not left waiting. Two processes
never compute the same stage: each worker computes one stage whose upstream stages are all done,
and ``Pipeline.get``'s lock makes a notebook that asks for the same stage wait for it.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from concurrent.futures.process import BrokenProcessPool
from contextlib import redirect_stderr, redirect_stdout
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from .device import cpu_cores, job_workers
from .pipeline import STAGES, Pipeline

__all__ = ["MAX_STAGE_WORKERS", "StageFailed", "compute_stages", "log_path", "stage_order", "stage_workers"]

# The stages' graph is 2-4 stages wide for most of a run (the verifiers beside the encoder →
# denoiser → releases chain; later the utility rows beside the privacy stages), so more workers
# would idle while the chain runs on fewer threads. Measured on 2 cores only.
MAX_STAGE_WORKERS = 2


class StageFailed(RuntimeError):
    """A stage raised in a worker process; the message names the stage."""


def stage_workers() -> int:
    """Worker processes for the stages: ``device.job_workers()`` capped at ``MAX_STAGE_WORKERS``
    (1 on a GPU or with ``TRICHOTOMY_WORKERS=1``: the stages then run in this process)."""
    return min(job_workers(), MAX_STAGE_WORKERS)


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

    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)               # numpy's and scipy's BLAS, in this process for good
    os.environ["TRICHOTOMY_WORKERS"] = "1"   # a stage's own jobs run one after another in this worker
    for module in modules:                   # registers the stages (spawned workers start empty)
        importlib.import_module(module)


def log_path(pipe: Pipeline, name: str) -> Path:
    """Where a worker writes what the stage printed (its progress bars, warnings)."""
    return pipe.run_dir / "logs" / f"{pipe.path(name).name}.log"


def _compute_one(cfg: dict, run_dir: str, name: str) -> None:
    """Compute one stage whose upstream stages are cached (a worker's job). Its output goes to
    ``log_path`` rather than between the parent's progress bars."""
    pipe = Pipeline(cfg, run_dir, verbose=False)
    log = log_path(pipe, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle, redirect_stdout(handle), redirect_stderr(handle):  # "a": a resumed stage adds
        try:
            pipe.get(name)
        except BaseException:
            traceback.print_exc(file=handle)
            raise


def compute_stages(pipe: Pipeline, names, desc: str = "stages") -> dict[str, Path]:
    """Compute ``names`` and their upstream stages, independent ones side by side (module docstring).

    Args:
        pipe: the pipeline (its config and run directory).
        names: stage names (each must be registered).
        desc: the progress bar's label.

    Returns ``{name: artifact directory}`` for every stage in ``names``. A stage that raises stops
    the scheduling: stages already running finish (their checkpoints stay in ``.partial``), then a
    ``StageFailed`` names the stage and its log, with the worker's exception as its cause. An
    interrupt (Ctrl-C) cancels the stages not started and waits for the running ones, which a
    terminal's Ctrl-C interrupts too; an interrupted stage resumes from its ``.partial`` folder.
    """
    names = list(names)
    order = stage_order(pipe, names)
    workers = stage_workers()
    if workers <= 1 or not order:
        for name in tqdm(order, desc=desc, unit="stage", disable=not order):
            try:
                pipe.get(name)
            except Exception as err:
                raise StageFailed(f"stage {name!r} raised {type(err).__name__}: {err}") from err
        return {name: pipe.get(name) for name in names}

    threads = max(1, cpu_cores() // workers)
    modules = tuple(sorted({STAGES[name].fn.__module__ for name in order}))
    pending, running, failed = list(order), {}, []
    with tqdm(total=len(order), desc=desc, unit="stage") as bar, \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init_worker, initargs=(threads, modules)) as pool:
        try:
            _run(pipe, pool, workers, threads, pending, running, failed, bar)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            tqdm.write(f"[pipeline] interrupted: {', '.join(sorted(running.values())) or 'no stage'} still running "
                       "(each resumes from its .partial folder on the next run)")
            raise
    if any(isinstance(err, BrokenProcessPool) for _, err in failed):  # a worker died: every running stage failed
        raise StageFailed(f"a worker process died while computing {', '.join(n for n, _ in failed)} "
                          f"(out of memory?); their logs: {log_path(pipe, failed[0][0]).parent}") from failed[0][1]
    if failed:
        name, err = failed[0]
        others = f"; also failed: {', '.join(n for n, _ in failed[1:])}" if len(failed) > 1 else ""
        raise StageFailed(f"stage {name!r} raised {type(err).__name__}: {err} (its output and traceback: "
                          f"{log_path(pipe, name)}){others}") from err
    return {name: pipe.get(name) for name in names}


def _run(pipe: Pipeline, pool, workers: int, threads: int, pending: list, running: dict, failed: list, bar) -> None:
    """The scheduling loop of ``compute_stages``: start every stage whose upstream is cached while
    a worker is free; on a failure start nothing more and let the running stages finish."""
    while pending or running:
        if not failed:
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
            if future.exception() is not None:
                failed.append((name, future.exception()))
            bar.update(1)
        if failed:
            pending.clear()
