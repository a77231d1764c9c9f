"""The polynomial surrogate on CUDA (``method="poly", device="cuda"``) against the CPU surrogate.

Both implementations build the same plan (degree, rank, radii, coefficients), so they differ
only by rounding: float64 results agree to rtol 1e-9 (atol 1e-12 of the largest value), float32
ones to float32 rounding. Sizes are tiny because the CUDA simulator runs one Python thread per
GPU thread; the GEMM tile is 4 so that products span several tiles.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba_cuda")

from tattn_numba import _cuda

if not _cuda.simulator_enabled() and not _cuda.cuda().is_available():
    pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set", allow_module_level=True)

from reference import dense_attention

import tattn_numba as ta
from tattn_numba import config
from tattn_numba._validation import check_attention_inputs
from tattn_numba.poly import _cuda_gemm, _cuda_kernels, features
from tattn_numba.poly import cuda as poly_cuda
from tattn_numba.poly import plan as poly_plan

cuda = _cuda.require()

GRADS = ("dQ", "dK1", "dK2", "dV1", "dV2")


@pytest.fixture(autouse=True)
def small_gemm_tile(monkeypatch):
    monkeypatch.setattr(config, "CUDA_GEMM_TILE", 4)


def make_inputs(seed, batch, n, m1, m2, d, dv, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = [(n, d), (m1, d), (m2, d), (m1, dv), (m2, dv), (n, dv)]
    return [rng.uniform(-1.0, 1.0, (batch, *s)).astype(dtype) for s in shapes]


def assert_close(actual, expected, rtol=1e-9, name=""):
    atol = 1e-12 * max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


def run_both(arrays, **options):
    """(O, lse, grads) from the CUDA and the CPU surrogate, host inputs."""
    Q, K1, K2, V1, V2, dO = arrays
    results = []
    for device in ("cuda", "cpu"):
        O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", device=device, **options)
        results.append((O, state, ta.attention_backward(state, dO)))
    return results


def assert_same_results(arrays, rtol=1e-9, **options):
    (O, state, grads), (O_cpu, state_cpu, grads_cpu) = run_both(arrays, **options)
    assert isinstance(O, np.ndarray) and O.dtype == arrays[0].dtype
    assert state.certificate.degree == state_cpu.certificate.degree
    np.testing.assert_array_equal(state.certificate.coefficients, state_cpu.certificate.coefficients)
    assert_close(O, O_cpu, rtol, "O")
    assert_close(state.lse, state_cpu.lse, rtol, "lse")
    for name, g, g_cpu in zip(GRADS, grads, grads_cpu):
        assert g.dtype == g_cpu.dtype and g.shape == g_cpu.shape
        assert_close(g, g_cpu, rtol, name)
    return state


@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_gemm_matches_numpy_on_awkward_shapes(transpose_a, transpose_b):
    rng = np.random.default_rng(int(transpose_a) + 2 * int(transpose_b))
    M, K, N = 7, 9, 5  # no multiple of the tile (4)
    A = rng.standard_normal((K, M) if transpose_a else (M, K))
    B = rng.standard_normal((N, K) if transpose_b else (K, N))
    expected = (A.T if transpose_a else A) @ (B.T if transpose_b else B)
    C = cuda.to_device(np.full((M, N), np.nan))
    _cuda_gemm.gemm(cuda.to_device(A), cuda.to_device(B), C, transpose_a=transpose_a, transpose_b=transpose_b)
    np.testing.assert_allclose(C.copy_to_host(), expected, rtol=1e-13, atol=1e-13)
    # accumulate into a strided view of a larger array, leaving the rest untouched
    C0 = rng.standard_normal((M, N + 3))
    C = cuda.to_device(C0)
    _cuda_gemm.gemm(cuda.to_device(A), cuda.to_device(B), C[:, 1:N + 1], transpose_a=transpose_a,
                    transpose_b=transpose_b, accumulate=True)
    out = C.copy_to_host()
    np.testing.assert_allclose(out[:, 1:N + 1], C0[:, 1:N + 1] + expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(out[:, [0, N + 1, N + 2]], C0[:, [0, N + 1, N + 2]])


def test_gemm_default_tile_and_shape_errors(monkeypatch):
    monkeypatch.setattr(config, "CUDA_GEMM_TILE", 16)
    rng = np.random.default_rng(5)
    A, B = rng.standard_normal((3, 17)), rng.standard_normal((17, 2))
    C = cuda.to_device(np.zeros((3, 2)))
    _cuda_gemm.gemm(cuda.to_device(A), cuda.to_device(B), C)
    np.testing.assert_allclose(C.copy_to_host(), A @ B, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="shapes do not match"):
        _cuda_gemm.gemm(cuda.to_device(A), cuda.to_device(B), C, transpose_b=True)


def test_feature_kernel_matches_cpu_feature_maps():
    rng = np.random.default_rng(3)
    d, degree, rows = 3, 3, 6
    table = features.multi_index_table(d, degree)
    X = rng.uniform(-1.0, 1.0, (rows, d))
    coefficients = rng.standard_normal((rows, degree + 1))
    device_table = [cuda.to_device(a) for a in table]
    for weighted, expected in ((True, features.query_features(X, coefficients, table)),
                               (False, features.key_features(X, table))):
        out = cuda.to_device(np.full(expected.shape, np.nan))
        _cuda_kernels._monomials[2, config.CUDA_THREADS_PER_BLOCK](
            cuda.to_device(X), cuda.to_device(coefficients), *device_table, weighted, out)
        np.testing.assert_allclose(out.copy_to_host(), expected, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_plan_from_device_statistics_equals_host_plan(dtype):
    arrays = make_inputs(7, 2, 9, 6, 5, 3, 2, dtype)[:5]
    host = check_attention_inputs(*arrays, None, False)
    device = check_attention_inputs(*(cuda.to_device(a) for a in arrays), None, False, "cuda")
    statistics = poly_cuda.input_statistics(*poly_cuda._operands(device), device.key_batch)
    for field, expected in zip(poly_plan.InputStatistics._fields, poly_plan.input_statistics(host)):
        np.testing.assert_allclose(getattr(statistics, field), expected, rtol=1e-15, atol=0.0, err_msg=field)
    for options in ({"degree": 3}, {"tol": 1e-3, "family": "taylor"}):
        expected = poly_plan.make_plan(host, **options)
        actual = poly_plan.make_plan(device, statistics=statistics, **options)
        for field in ("family", "degree", "rank", "radius", "global_radius", "epsilon", "coefficients", "kappa",
                      "output_bound", "max_output_bound", "chunk_rows"):
            np.testing.assert_array_equal(getattr(actual, field), getattr(expected, field), err_msg=field)


@pytest.mark.parametrize("causal", [False, True])
def test_float64_forward_and_gradients_match_cpu(causal):
    n, m1, m2 = (7, 7, 7) if causal else (7, 6, 5)
    arrays = make_inputs(11, 2, n, m1, m2, 2, 2)
    state = assert_same_results(arrays, degree=3, causal=causal)
    assert state.certificate.rank == 10


@pytest.mark.parametrize("causal", [False, True])
def test_several_row_chunks_match_cpu(causal, monkeypatch):
    monkeypatch.setattr(config, "POLY_CHUNK_ROWS", 3)
    arrays = make_inputs(13, 1, 8, 8, 8, 2, 1)
    state = assert_same_results(arrays, degree=2, causal=causal, family="taylor")
    assert state.certificate.chunk_rows == 3


def test_float32_inputs_match_cpu_on_the_same_inputs():
    arrays = make_inputs(17, 2, 5, 4, 6, 3, 2, np.float32)
    assert_same_results(arrays, rtol=2e-5, degree=2)


def test_device_inputs_give_device_results():
    arrays = make_inputs(19, 2, 6, 5, 4, 2, 3)
    Q, K1, K2, V1, V2, dO = (cuda.to_device(a) for a in arrays)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", device="cuda", degree=2)
    grads = ta.attention_backward(state, dO)
    assert not isinstance(O, np.ndarray) and not isinstance(grads.dQ, np.ndarray)
    O_only = ta.attention(Q, K1, K2, V1, V2, method="poly", device="cuda", degree=2)
    expected_O, expected_state = ta.attention_forward(*arrays[:5], method="poly", degree=2)
    expected = ta.attention_backward(expected_state, arrays[5])
    assert_close(O.copy_to_host(), expected_O)
    assert_close(O_only.copy_to_host(), expected_O)
    assert_close(state.lse.copy_to_host(), expected_state.lse)
    for name, g, g_cpu in zip(GRADS, grads, expected):
        assert_close(g.copy_to_host(), g_cpu, name=name)


def test_backward_recomputes_key_summaries_outside_the_budget():
    arrays = make_inputs(23, 2, 6, 5, 4, 2, 2)
    # 2·8·B·r·(1 + dv + d + dv·d) = 2880 bytes of summaries exceed a quarter of 10000
    (_, state, grads), (_, _, grads_cpu) = run_both(arrays, degree=3, memory_budget=10_000)
    assert state._saved.key_summaries is None
    grad = ta.attention_grad(*arrays, method="poly", device="cuda", degree=3, memory_budget=10_000)
    for name, g, g2, g_cpu in zip(GRADS, grads, grad, grads_cpu):
        assert_close(g, g_cpu, name=name)
        assert_close(g2, g_cpu, name=name)


def test_output_within_certificate_of_exact_attention():
    arrays = make_inputs(29, 1, 6, 5, 6, 2, 2)
    O, state = ta.attention_forward(*arrays[:5], method="poly", device="cuda", tol=1e-4)
    exact, _ = dense_attention(*arrays[:5])
    bound = state.certificate.output_bound.reshape(exact.shape)
    assert np.all(np.abs(O - exact) <= bound + 1e-12)
    assert 0 < state.certificate.max_output_bound <= 1e-4


def test_degree_too_low_raises_the_cpu_error():
    arrays = [3.0 * a for a in make_inputs(31, 1, 4, 4, 4, 2, 1)[:5]]
    messages = []
    for device in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="too low") as info:
            ta.attention(*arrays, method="poly", device=device, degree=1, scale=1.0)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_bad_normaliser_is_counted_and_raises_the_cpu_error():
    T = cuda.to_device(np.array([[2.0, 4.0], [-1.0, 1.0], [np.nan, 0.0], [0.5, 1.0]]))
    O = cuda.to_device(np.zeros((4, 1)))
    lse = cuda.to_device(np.zeros(4))
    bad = cuda.to_device(np.zeros(1, dtype=np.int64))
    _cuda_kernels._normalise[2, 2](T, O, lse, bad)
    assert int(bad.copy_to_host()[0]) == 2
    np.testing.assert_allclose(O.copy_to_host()[[0, 3], 0], [2.0, 2.0])
    np.testing.assert_allclose(lse.copy_to_host()[[0, 3]], np.log([2.0, 0.5]))
    plan = poly_plan.make_plan(check_attention_inputs(*make_inputs(1, 1, 2, 2, 2, 1, 1)[:5], None, False), degree=2)
    with pytest.raises(ValueError) as from_device:
        poly_cuda._raise_if_bad(bad, plan)
    with pytest.raises(ValueError) as from_host:
        poly_plan.check_normaliser(np.array([1.0, -1.0]), plan)
    assert str(from_device.value) == str(from_host.value)
