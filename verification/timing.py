"""Timing and scaling fits shared by the report's scaling probe and the benchmark scripts.

:func:`best_time` is the one timing loop (warm-up, then the minimum of a few runs, each ended by
an optional device synchronisation), :func:`best_times` the same for implementations compared in
one run, interleaved round by round so that a change of machine load hits them alike;
:func:`loglog_slope` is the one least-squares fit of
log(time) against log(n).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["best_time", "best_times", "loglog_slope"]


def best_time(fn, repeat: int, *, synchronize=None, warmup: bool = True) -> float:
    """Minimum wall-clock seconds of ``repeat`` calls of ``fn()``.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    repeat : int
        Timed calls; the minimum is returned (inf when ``repeat`` < 1).
    synchronize : callable, optional
        Called after every call of ``fn`` (the warm-up included) and inside the timed interval,
        e.g. ``cuda.synchronize`` so that asynchronous GPU work is counted.
    warmup : bool
        Call ``fn`` once, untimed, first (compilation, caches).
    """
    sync = synchronize if synchronize is not None else (lambda: None)
    if warmup:
        fn()
        sync()
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def best_times(fns: dict, repeat: int, *, pause: float = 0.0) -> dict:
    """Minimum wall-clock seconds of each callable of ``fns`` ({name: fn}) over ``repeat`` rounds,
    each round calling every one once in turn (after one untimed warm-up call each): the same-run
    comparison of the benchmark scripts, robust to the load of a shared machine changing.

    ``pause`` seconds are slept, untimed, before every timed call: after a NumPy matrix product the
    BLAS worker threads spin for a while (OpenBLAS: about 0.2 s) and would take the cores from the
    next call (measured: a Numba kernel right after a product ran at 0.62× its speed, with a 0.5 s
    pause at 1.0×)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeat):
        for name, fn in fns.items():
            if pause > 0:
                time.sleep(pause)
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def loglog_slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])
