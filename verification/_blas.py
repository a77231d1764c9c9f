"""Limit the BLAS thread pool for a block of code (NumPy's OpenBLAS), without extra dependencies.

Why: the hard-instance probe's gradient identity calls ``paper.grad_X`` dozens of times, each a
long chain of small batched matrix products through NumPy's BLAS. With two OpenBLAS threads
on two cores that Numba's OpenMP workers (and, on a shared machine, other processes) also
want, every one of those small products waits for a descheduled partner thread: measured here
(2-core AMD EPYC, shared), 16 calls at n = 64 took 9–60 s with the default two BLAS threads and
1.5–1.8 s with one. Small products gain nothing from a second thread, so the probe runs them on
one.

:func:`blas_threads` uses ``threadpoolctl`` when it is installed; otherwise it finds the OpenBLAS
libraries already loaded in this process (``/proc/self/maps``, Linux) and calls their
``*set_num_threads*`` through ctypes. Where neither works it does nothing (results are the same,
only slower).
"""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["blas_threads"]

#: (getter, setter) symbol pairs of the OpenBLAS builds NumPy and SciPy ship, tried in order.
_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def _loaded_openblas() -> list[tuple]:
    """(get, set) ctypes functions of every OpenBLAS library mapped into this process."""
    try:
        with open("/proc/self/maps") as handle:
            paths = {line.split()[-1] for line in handle if "openblas" in line.lower() and ".so" in line}
    except OSError:  # not Linux
        return []
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS:
            getter, setter = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype, getter.argtypes = ctypes.c_int, []
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                found.append((getter, setter))
                break
    return found


@contextlib.contextmanager
def blas_threads(limit: int = 1):
    """Run the block with at most ``limit`` BLAS threads, restoring the previous counts after it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=limit, user_api="blas"):
            yield
        return
    libs = _loaded_openblas()
    previous = [getter() for getter, _ in libs]
    for _, setter in libs:
        setter(limit)
    try:
        yield
    finally:
        for (_, setter), count in zip(libs, previous):
            setter(count)
