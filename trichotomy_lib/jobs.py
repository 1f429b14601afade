"""Independent jobs (classifier seeds, one model per dataset) side by side on the CPU's cores.

``run_jobs(fn, jobs, desc)`` calls ``fn(*args)`` for every ``args`` in ``jobs`` and returns the
results in the order of ``jobs``. The rounds come from ``device.job_rounds``: a round of one
job runs in this process; a round of k > 1 jobs runs in k fresh (spawned) processes, each with
torch limited to its share of the threads. Each job is seeded by its own arguments, so its
result does not depend on which round or process ran it, except for the floating-point order
of a different thread count.

Contract for ``fn``: a module-level function (the processes import it by name) with a keyword
``progress`` (True when the job runs alone in this process and may show its own progress bar,
False in a worker process, whose bars would interleave), picklable arguments and result, and
its own output paths — so an interrupted round loses only the jobs
that had not finished, and a caller that skips finished jobs resumes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .device import job_rounds

__all__ = ["run_jobs"]


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], desc: str) -> list:
    """``[fn(*args, progress=...) for args in jobs]``, in rounds of processes (see the module docstring).

    An exception in a job is raised here (with the job's own traceback attached by
    ``concurrent.futures``) after the round's other jobs have finished.
    """
    jobs = [tuple(args) for args in jobs]
    results: list = [None] * len(jobs)
    first = 0
    with tqdm(total=len(jobs), desc=desc, unit="job", leave=False, disable=not jobs) as bar:
        for size, threads in job_rounds(len(jobs)):
            if size == 1:
                results[first] = fn(*jobs[first], progress=True)
                bar.update(1)
            else:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(size, mp_context=context, initializer=_limit_threads,
                                         initargs=(threads,)) as pool:
                    futures = {pool.submit(fn, *jobs[i], progress=False): i for i in range(first, first + size)}
                    for future in as_completed(futures):
                        results[futures[future]] = future.result()
                        bar.update(1)
            first += size
    return results
