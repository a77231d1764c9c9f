"""n-way attention of order t = 3: exact kernel against the degree-4 surrogate, forward+backward.

Small cases of ``benchmarks/nway.py`` (which writes docs/nway_benchmarks.md): n = m1 = m2 = m3,
d = dv = 4, float64, entries uniform in [−1, 1]; ``extra_info`` holds the surrogate's speed-up
over the exact kernel measured in the same run, and the surrogate's certified max |Õ − O|.

Run: ``python -m pytest benchmarks/test_nway.py`` (``--benchmark-disable`` to run each case once).
"""

from __future__ import annotations

import pytest

import tattn_numba as ta

from .conftest import record

T, D, DEGREE = 3, 4, 4
SIZES = [32, 64]


def _inputs(rng, n):
    Q, dO = rng.uniform(-1, 1, (2, n, D))
    keys = tuple(rng.uniform(-1, 1, (T, n, D)))
    values = tuple(rng.uniform(-1, 1, (T, n, D)))
    return Q, keys, values, dO


def _exact(Q, keys, values, dO):
    return ta.nway_attention_grad(Q, keys, values, dO)


def _poly(Q, keys, values, dO):
    return ta.nway_attention_grad(Q, keys, values, dO, method="poly", degree=DEGREE)


IMPLEMENTATIONS = {"tattn_exact": _exact, "tattn_poly": _poly}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
def test_nway_forward_backward(benchmark, rng, implementation, n):
    fn = IMPLEMENTATIONS[implementation]
    args = _inputs(rng, n)
    fn(*args)  # warm-up: JIT compilation and first-touch allocation
    benchmark.group = f"nway t={T} forward_backward n={n}"
    benchmark.pedantic(fn, args=args, rounds=5, iterations=1)
    if not benchmark.enabled:  # --benchmark-disable: run once, nothing to record
        return
    record(benchmark, benchmark.group, implementation)
    if implementation == "tattn_poly":
        benchmark.extra_info["max_output_bound"] = ta.nway_poly_plan(*args[:3], degree=DEGREE).max_output_bound
