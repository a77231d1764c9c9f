"""The windowed polynomial surrogate on CUDA (``method="poly", device="cuda", window=(w1, w2)``)
against the windowed surrogate on the CPU (tattn_numba/poly/causal.py).

Both build the same plan and the GPU scans perform, per state and accumulator entry, the CPU's
sums in its order (the sums over features are tree sums), so float64 results agree to round-off
(rtol 1e-12 here). Grouped heads (two query heads over one key head) exercise the summed key
gradients; chunks of 3 rows split n = 7 so that restarts, the rows a chunk reads before it and
the lead and trailing scans cross chunk ends. Tiny sizes: the simulator runs one Python thread
per GPU thread.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba_cuda")

from tattn_numba import _cuda

if not _cuda.simulator_enabled() and not _cuda.cuda().is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

import tattn_numba as ta
from tattn_numba import config

N = 7
GRADS = ("dQ", "dK1", "dK2", "dV1", "dV2")


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(config, "CUDA_GEMM_TILE", 4)
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 3)


def grouped_inputs(seed, n=N, d=2, dv=2):
    rng = np.random.default_rng(seed)
    shapes = [(1, 2, n, d), (1, 1, n, d), (1, 1, n, d), (1, 1, n, dv), (1, 1, n, dv), (1, 2, n, dv)]
    return [rng.uniform(-1.0, 1.0, s) for s in shapes]


def run(X, device, **kw):
    O, state = ta.attention_forward(*X[:5], method="poly", device=device, degree=3, **kw)
    return O, state, ta.attention_backward(state, X[5])


def assert_close(actual, expected, name):
    """rtol 1e-12, and an absolute floor 1e-13 of the larger of the result and the O(1) inputs:
    with window (1, 1) dQ, dK1, dK2 vanish exactly (one visible pair per row) and both devices
    return rounding noise (~1e-17)."""
    atol = 1e-13 * max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=atol, err_msg=name)


@pytest.mark.parametrize("window", [(1, 1), (2, 3), (3, 1), (N - 1, 2), (2, N + 3)])
def test_window_on_cuda_equals_cpu(window):
    """(2, N + 3): key set 2 sees every row, so its state is the prefix carried across chunks."""
    X = grouped_inputs(sum(window))
    O, state, grads = run(X, "cuda", window=window)
    O_cpu, state_cpu, grads_cpu = run(X, "cpu", window=window)
    assert state.certificate.chunk_rows == 3 and state.certificate.rank == state_cpu.certificate.rank
    np.testing.assert_array_equal(state.certificate.coefficients, state_cpu.certificate.coefficients)
    assert_close(O, O_cpu, "O")
    assert_close(state.lse, state_cpu.lse, "lse")
    for name, g, g_cpu in zip(GRADS, grads, grads_cpu):
        assert g.shape == g_cpu.shape, name
        assert_close(g, g_cpu, name)


def test_window_n_on_cuda_equals_causal_on_cuda():
    """Windows of at least n take the causal kernels: bit-identical results."""
    X = grouped_inputs(5, n=5)
    O_w, state_w, grads_w = run(X, "cuda", window=(5, 5))
    O_c, state_c, grads_c = run(X, "cuda", causal=True)
    np.testing.assert_array_equal(O_w, O_c)
    np.testing.assert_array_equal(state_w.lse, state_c.lse)
    for name, gw, gc in zip(GRADS, grads_w, grads_c):
        np.testing.assert_array_equal(gw, gc, err_msg=name)
