"""Exact streaming kernel against the dense NumPy implementation, in the same run.

Flop convention (forward): 4·n·m1·m2·d with d = dv, i.e. 2·n·m1·m2·d for the logits and
2·n·m1·m2·dv for the value contraction; exponentials are not counted. The backward recomputes
the logits and does five more contractions of the same size: forward+backward is counted as
16·n·m1·m2·d. ``test_matmul_rate`` measures NumPy's matrix-product rate in the same run for
scale.

Run: ``python -m pytest benchmarks/`` (add ``-m slow`` for n = 2048, ``--benchmark-autosave``
to keep the results).
"""

from __future__ import annotations

import numpy as np
import pytest

import tattn_numba as ta

from . import dense_numpy
from .conftest import record

D = 16
SIZES = [128, 256, 512]
DTYPES = [np.float64, np.float32]


def _inputs(rng, n, dtype):
    Q, K1, K2, V1, V2, dO = (rng.uniform(-1, 1, (n, D)).astype(dtype) for _ in range(6))
    return Q, K1, K2, V1, V2, dO


def _exact_forward(Q, K1, K2, V1, V2, dO):
    return ta.attention(Q, K1, K2, V1, V2)


def _exact_forward_backward(Q, K1, K2, V1, V2, dO):
    return ta.attention_grad(Q, K1, K2, V1, V2, dO)


def _dense_forward(Q, K1, K2, V1, V2, dO):
    return dense_numpy.forward(Q, K1, K2, V1, V2, 1.0 / D)


def _dense_forward_backward(Q, K1, K2, V1, V2, dO):
    return dense_numpy.forward_backward(Q, K1, K2, V1, V2, dO, 1.0 / D)


IMPLEMENTATIONS = {
    ("forward", "numpy_dense"): (_dense_forward, 4),
    ("forward", "tattn_exact"): (_exact_forward, 4),
    ("forward_backward", "numpy_dense"): (_dense_forward_backward, 16),
    ("forward_backward", "tattn_exact"): (_exact_forward_backward, 16),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("which", list(IMPLEMENTATIONS), ids="-".join)
def test_exact_vs_dense(benchmark, rng, which, n, dtype):
    stage, implementation = which
    fn, flops_per_triple = IMPLEMENTATIONS[which]
    args = _inputs(rng, n, dtype)
    fn(*args)  # warm-up: JIT compilation and first-touch allocation
    group = f"{stage} n={n} {np.dtype(dtype).name}"
    benchmark.group = group
    rounds = 3 if n >= 512 else 5
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1)
    record(benchmark, group, implementation, flops_per_triple * n**3 * D)


@pytest.mark.slow
def test_exact_forward_backward_2048(benchmark, rng):
    """The largest size of the issue: n = m1 = m2 = 2048, d = 16, float64 (minutes)."""
    args = _inputs(rng, 2048, np.float64)
    _exact_forward_backward(*(a[:8] for a in args))
    benchmark.group = "forward_backward n=2048 float64"
    benchmark.pedantic(_exact_forward_backward, args=args, rounds=1, iterations=1)
    record(benchmark, benchmark.group, "tattn_exact", 16 * 2048**3 * D)


@pytest.mark.parametrize("size", [512, 2048])
def test_matmul_rate(benchmark, rng, size):
    """NumPy float64 matrix product (BLAS), the machine's practical peak, for scale."""
    A = rng.standard_normal((size, size))
    B = rng.standard_normal((size, size))
    benchmark.group = f"numpy matmul {size}"
    benchmark(np.matmul, A, B)
    record(benchmark, benchmark.group, "numpy_matmul", 2 * size**3)
