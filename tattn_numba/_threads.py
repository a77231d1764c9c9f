"""Run small problems on one thread.

A Numba parallel region wakes the pool's other threads; with OpenMP's passive waiting (see
:mod:`tattn_numba.config`) that costs tens of microseconds, far more than a small problem's
work, and when another runtime (PyTorch's OpenMP, say) shares the cores it dominates: a Match3
training loop with n = 6 ran 5x slower on two threads than on one (72 s against 14 s).
"""

from __future__ import annotations

from contextlib import contextmanager

import numba

from . import config


@contextmanager
def threads_for(flops: float):
    """Within the block, Numba parallel loops use one thread when ``flops`` is below
    ``config.SERIAL_BELOW_FLOPS``, else the current thread count. Thread-local, restored after."""
    current = numba.get_num_threads()
    if flops >= config.SERIAL_BELOW_FLOPS or current == 1:
        yield current
        return
    numba.set_num_threads(1)
    try:
        yield 1
    finally:
        numba.set_num_threads(current)
