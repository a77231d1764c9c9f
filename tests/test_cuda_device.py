"""``device="cuda"``: where arrays live, what comes back, and the errors around it.

The numerical agreement of the CUDA kernels with the dense reference is tested by the shared
suites (tests/test_attention_exact.py and friends are parametrised over every registered exact
implementation; tests/test_poly_cuda.py covers the surrogate). This module tests the device
plumbing: GPU inputs used in place with results left on the GPU, host inputs copied explicitly
with results copied back, mixtures refused, GPU arrays validated on the GPU (dtype, contiguity,
NaN/Inf), modified GPU inputs detected before a backward, and a clear error when numba-cuda or
a GPU is missing. Runs under numba-cuda's simulator on machines without a GPU (conftest.py).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tattn_numba as ta
from reference import dense_attention, dense_attention_grad
from tattn_numba import _cuda

pytest.importorskip("numba_cuda")

try:
    _cuda.require()
except _cuda.CUDAUnavailableError as exc:  # pragma: no cover - only with NUMBA_ENABLE_CUDASIM=0 and no GPU
    pytest.skip(f"CUDA unusable here: {exc}", allow_module_level=True)

NAMES = ("Q", "K1", "K2", "V1", "V2")
N, M1, M2, D, DV = 5, 4, 3, 3, 2


def _host_inputs(dtype=np.float64, batch=()):
    """Entries in [-1, 1): small logits, so a degree-3 surrogate is certified."""
    rng = np.random.default_rng(7)
    shapes = [(N, D), (M1, D), (M2, D), (M1, DV), (M2, DV), (N, DV)]
    return [rng.uniform(-1.0, 1.0, batch + s).astype(dtype) for s in shapes]


def _to_device(arrays):
    return [_cuda.cuda().to_device(x) for x in arrays]


def _is_device(x) -> bool:
    return _cuda.is_device_array(x) and not isinstance(x, np.ndarray)


@pytest.mark.parametrize("method, options", [("exact", {}), ("poly", {"degree": 3})])
def test_host_inputs_give_host_results(method, options):
    *X, dO = _host_inputs(batch=(2,))
    O, state = ta.attention_forward(*X, device="cuda", method=method, **options)
    grads = ta.attention_backward(state, dO)
    assert isinstance(O, np.ndarray) and isinstance(state.lse, np.ndarray)
    assert all(isinstance(g, np.ndarray) for g in grads)
    assert O.shape == (2, N, DV) and state.lse.shape == (2, N)
    for g, x in zip(grads, X):
        assert g.shape == x.shape and g.dtype == x.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_inputs_stay_on_device(dtype):
    host = _host_inputs(dtype, batch=(2,))
    *X, dO = _to_device(host)
    O, state = ta.attention_forward(*X, device="cuda")
    grads = ta.attention_backward(state, dO)
    assert _is_device(O) and _is_device(state.lse)
    assert O.dtype == dtype and tuple(O.shape) == (2, N, DV)
    ref, _ = dense_attention(*(x.astype(np.float64) for x in host[:5]))
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(O.copy_to_host(), ref, rtol=rtol, atol=rtol)
    for g, x, name in zip(grads, host, NAMES):
        assert _is_device(g), name
        assert g.dtype == dtype and tuple(g.shape) == x.shape, name
    ref_grads = dense_attention_grad(*(x.astype(np.float64) for x in host))
    for g, r, name in zip(grads, ref_grads, NAMES):
        np.testing.assert_allclose(g.copy_to_host(), r, rtol=100 * rtol, atol=100 * rtol, err_msg=name)


def test_device_inputs_with_attention_and_attention_grad():
    host = _host_inputs()
    *X, dO = _to_device(host)
    O = ta.attention(*X, device="cuda", causal=False)
    g = ta.attention_grad(*X, dO, device="cuda")
    assert _is_device(O) and _is_device(g.dK2)
    np.testing.assert_allclose(O.copy_to_host(), ta.attention(*host[:5]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("on_gpu", [("Q",), ("K1", "V2"), ("Q", "K1", "K2", "V1")])
def test_mixed_host_and_device_inputs_are_refused(on_gpu):
    host = _host_inputs()[:5]
    X = [_cuda.cuda().to_device(x) if name in on_gpu else x for name, x in zip(NAMES, host)]
    with pytest.raises(ValueError, match="host array") as info:
        ta.attention(*X, device="cuda")
    for name in NAMES:
        assert name in str(info.value)


def test_device_inputs_on_the_cpu_path_are_refused():
    host = _host_inputs()[:5]
    X = list(host)
    X[2] = _cuda.cuda().to_device(host[2])
    with pytest.raises(TypeError, match="K2 is a GPU array.*device='cuda'"):
        ta.attention(*X)


def test_upstream_must_sit_where_the_inputs_were():
    host = _host_inputs()
    *X, dO = host
    _, state = ta.attention_forward(*X, device="cuda")
    with pytest.raises(ValueError, match="dO is a GPU array but the forward inputs were host arrays"):
        ta.attention_backward(state, _cuda.cuda().to_device(dO))
    _, state = ta.attention_forward(*_to_device(X), device="cuda")
    with pytest.raises(ValueError, match="dO is a host array but the forward inputs were GPU arrays"):
        ta.attention_backward(state, dO)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_device_input_is_refused(name, bad):
    host = _host_inputs()[:5]
    host[NAMES.index(name)][-1, -1] = bad
    with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
        ta.attention(*_to_device(host), device="cuda")


def test_non_finite_device_upstream_is_refused():
    *X, dO = _to_device(_host_inputs())
    _, state = ta.attention_forward(*X, device="cuda")
    bad = _host_inputs()[5]
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="dO contains NaN or Inf"):
        ta.attention_backward(state, _cuda.cuda().to_device(bad))


def test_mixed_dtypes_on_device_are_refused():
    host = _host_inputs()[:5]
    host[3] = host[3].astype(np.float32)
    with pytest.raises(TypeError, match="V1 has dtype float32 but the other inputs are float64"):
        ta.attention(*_to_device(host), device="cuda")


def test_unsupported_device_dtype_is_refused():
    host = _host_inputs()[:5]
    host[0] = host[0].astype(np.float16)
    with pytest.raises(TypeError, match="Q must have dtype float32 or float64, got float16"):
        ta.attention(*_to_device(host), device="cuda")


def test_non_contiguous_device_array_is_refused():
    host = _host_inputs()[:5]
    X = _to_device(host)
    X[1] = _cuda.cuda().to_device(np.ascontiguousarray(host[1].T)).T  # a transposed view
    with pytest.raises(ValueError, match="K1 is a non-contiguous GPU array"):
        ta.attention(*X, device="cuda")


def test_device_shape_mismatch_is_refused():
    host = _host_inputs()[:5]
    host[4] = np.ascontiguousarray(host[4][:, :1])
    with pytest.raises(ValueError, match="V2 must have shape"):
        ta.attention(*_to_device(host), device="cuda")


def test_modified_device_input_is_detected():
    host = _host_inputs()
    *X, dO = _to_device(host)
    _, state = ta.attention_forward(*X, device="cuda")
    changed = host[2].copy()
    changed[0, 0] += 1e-12
    X[2].copy_to_device(changed)
    with pytest.raises(ValueError, match="K2 was modified after attention_forward"):
        ta.attention_backward(state, dO)


def test_device_fingerprint_sees_every_word():
    from tattn_numba import _device

    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    base = _device.fingerprint(_cuda.cuda().to_device(x))
    assert base == _device.fingerprint(_cuda.cuda().to_device(x.copy()))
    for index in [(0, 0, 0), (1, 2, 3), (2, 3, 4)]:
        y = x.copy()
        y[index] = np.nextafter(y[index], np.inf)  # one low bit of one entry
        assert _device.fingerprint(_cuda.cuda().to_device(y)) != base, index
    swapped = x.copy()
    swapped[0, 0, [0, 1]] = swapped[0, 0, [1, 0]]
    assert _device.fingerprint(_cuda.cuda().to_device(swapped)) != base


def test_device_column_extrema_and_finiteness():
    from tattn_numba import _device

    x = np.random.default_rng(1).standard_normal((2, 37, 3))
    lo, hi = _device.column_extrema(_cuda.cuda().to_device(x))
    np.testing.assert_array_equal(lo, x.min(axis=1))
    np.testing.assert_array_equal(hi, x.max(axis=1))
    assert _device.all_finite(_cuda.cuda().to_device(x))
    x[1, 36, 2] = np.inf
    assert not _device.all_finite(_cuda.cuda().to_device(x))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the simulator's NumPy cast
def test_float32_overflowing_result_is_reported_on_device():
    host = [np.ones((2, 1), np.float32) for _ in range(5)]
    host[3][:] = 3e38
    host[4][:] = 10.0
    with pytest.raises(ValueError, match="overflows float32"):
        ta.attention(*_to_device(host), device="cuda")


def test_no_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_cuda.cuda(), "is_available", lambda: False)
    with pytest.raises(ta.CUDAUnavailableError, match="needs an NVIDIA GPU.*NUMBA_ENABLE_CUDASIM=1"):
        ta.attention(*_host_inputs()[:5], device="cuda")


def test_missing_numba_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_cuda, "_module", None)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)  # makes ``from numba import cuda`` fail
    monkeypatch.delattr(sys.modules["numba"], "cuda", raising=False)
    with pytest.raises(ta.CUDAUnavailableError, match=r"needs the numba-cuda package.*tattn-numba\[cuda\]"):
        ta.attention(*_host_inputs()[:5], device="cuda", method="poly", degree=3)


def test_cuda_error_is_a_runtime_error_not_a_value_error():
    assert issubclass(ta.CUDAUnavailableError, RuntimeError)
    assert not issubclass(ta.CUDAUnavailableError, ValueError)


def test_poly_gradient_bounds_of_a_cuda_state_is_refused_clearly():
    *X, dO = _host_inputs()
    _, state = ta.attention_forward(*X, device="cuda", method="poly", degree=3)
    with pytest.raises(ValueError, match="poly_gradient_bounds works on host arrays.*poly_plan"):
        ta.poly_gradient_bounds(state, dO)
    plan = ta.poly_plan(*X, degree=3, dO=dO)
    assert plan.degree == state.certificate.degree and plan.gradient_bounds is not None
