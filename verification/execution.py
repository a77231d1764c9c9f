"""Where the sweep points run: in-process by default, a process pool, or a Dask cluster.

Every probe submits independent tasks (top-level functions, picklable) to an object with the
``concurrent.futures.Executor`` interface, so the same code runs in-process for the quick
report and on many machines for the full one (``--scheduler ADDRESS``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one): the most workers."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> int:
    """``workers`` if it is between 1 and :func:`available_cpus`; otherwise a ValueError."""
    limit = available_cpus()
    if not 1 <= workers <= limit:
        raise ValueError(f"{workers} workers: must be between 1 and {limit}, the CPUs available to this process")
    return workers


class InProcessExecutor(concurrent.futures.Executor):
    """Runs each task when it is submitted, in this process (deterministic, no pickling)."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def make_executor(scheduler: str | None = None, workers: int | None = None) -> concurrent.futures.Executor:
    """In-process (default), a local process pool (``workers``), or a Dask cluster at
    ``scheduler`` (``tcp://host:8786``; needs ``pip install tattn-numba[dask]``)."""
    if scheduler is not None and workers is not None:
        raise ValueError("give either scheduler (a Dask cluster) or workers (a local process pool), not both")
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "--scheduler needs dask.distributed: pip install 'tattn-numba[dask]'"
            ) from exc
        return Client(scheduler).get_executor()
    if workers is not None:
        check_workers(workers)
        # spawn, not fork: a forked child of a process that already ran a Numba parallel (GNU
        # OpenMP) kernel aborts ("fork() called from a process already using GNU OpenMP").
        return concurrent.futures.ProcessPoolExecutor(max_workers=workers,
                                                      mp_context=multiprocessing.get_context("spawn"))
    return InProcessExecutor()
