"""The explicit SIMD vectors of the CPU kernels (tattn_numba/exact/_simd.py): each intrinsic
against NumPy, the width chosen per compile target, and the product on a target without AVX-512."""

from __future__ import annotations

import os
import subprocess
import sys

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest

from tattn_numba.exact import _simd


@numba.njit
def _lanes(x):
    return _simd.lanes(x)


@numba.njit
def _axpy_vectors(weight, x, acc, start):
    """acc[start : start + lanes] += weight · x[start : start + lanes] through Vector values."""
    _simd.store_first(acc, start, _simd.fma(_simd.load_first(acc, start, None), weight,
                                            _simd.load_first(x, start, None)), None)


@numba.njit
def _zero_vector(x, start):
    _simd.store_first(x, start, _simd.zeros(x), None)


@numba.njit
def _element(x, index):
    return _simd.element(x, index)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lanes_fill_the_vector_bytes(dtype):
    assert _lanes(np.zeros(1, dtype)) * np.dtype(dtype).itemsize == _simd.VECTOR_BYTES


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("start", [0, 1, 3])
def test_load_fma_store_touch_exactly_their_lanes(dtype, start):
    """Unaligned offsets, neighbours untouched, the weight broadcast to every lane."""
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(start)
    x = rng.standard_normal(lanes + 5).astype(dtype)
    acc = rng.standard_normal(lanes + 5).astype(dtype)
    expected = acc.copy()
    expected[start: start + lanes] += dtype(0.75) * x[start: start + lanes]
    scale = np.abs(acc) + np.abs(0.75 * x)  # the fused and the rounded multiply-add differ by an ulp of this
    _axpy_vectors(0.75, x, acc, start)
    assert np.all(np.abs(acc - expected) <= np.finfo(dtype).eps * scale)
    assert np.array_equal(acc[:start], expected[:start]) and np.array_equal(acc[start + lanes:], expected[start + lanes:])
    _zero_vector(acc, start)
    assert not acc[start: start + lanes].any() and np.array_equal(acc[start + lanes:], expected[start + lanes:])


@numba.njit
def _axpy_first(weight, x, acc, start, count):
    """The first ``count`` lanes of :func:`_axpy_vectors` through masked loads and stores."""
    _simd.store_first(acc, start, _simd.fma(_simd.load_first(acc, start, count), weight,
                                            _simd.load_first(x, start, count)), count)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count", [0, 1, 5, "lanes", None])
def test_masked_loads_and_stores_touch_only_their_lanes(dtype, count):
    """``count`` lanes (None: every lane, unmasked) read and written, the memory after them
    untouched; ``x`` ends where its used lanes end."""
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    count = lanes if count == "lanes" else count
    used = lanes if count is None else count
    rng = np.random.default_rng(used)
    x = rng.standard_normal(used).astype(dtype)
    acc = rng.standard_normal(lanes + 3).astype(dtype)
    expected = acc.copy()
    expected[:used] += dtype(2.0) * x
    _axpy_first(2.0, x, acc, 0, count)
    assert np.allclose(acc[:used], expected[:used], rtol=2 * np.finfo(dtype).eps)
    assert np.array_equal(acc[used:], expected[used:])


def test_fma_rounds_once():
    """acc + w·x with one rounding: (1 + 2^-30)^2 - (1 + 2^-29) = 2^-60 exactly, which a
    multiply rounded before the add loses (it gives 0)."""
    lanes = _simd.VECTOR_BYTES // 8
    w = 1.0 + 2.0**-30
    x = np.full(lanes, w)
    acc = np.full(lanes, -(1.0 + 2.0**-29))
    _axpy_vectors(w, x, acc, 0)
    assert np.all(acc == 2.0**-60)


def test_element_reads_without_wraparound():
    x = np.arange(10.0)
    assert _element(x, 0) == 0.0 and _element(x, 9) == 9.0


def test_intrinsics_refuse_other_types():
    with pytest.raises(numba.TypingError):
        _lanes(np.zeros(3, np.int64))
    with pytest.raises(numba.TypingError):
        _element(np.zeros((2, 2)), 0)


_AVX2_CHECK = """
import numpy as np
from tattn_numba.exact import _simd, cpu
assert _simd.VECTOR_BYTES == 32, _simd.VECTOR_BYTES
rng = np.random.default_rng(0)
for dtype, tol in ((np.float64, 1e-13), (np.float32, 3e-5)):
    for rows, inner, cols in ((8, 16, 32), (9, 5, 21), (4, 3, 8)):
        coef, Y = (rng.standard_normal(s).astype(dtype) for s in ((rows, inner), (inner, cols)))
        out = np.zeros((rows, cols), dtype)
        cpu._mm(coef.ravel(), inner, Y.ravel(), cols, out.ravel(), cols, rows, inner, cols, False)
        np.testing.assert_allclose(out, coef.astype(float) @ Y, rtol=tol, atol=tol)
print("ok")
"""


def test_product_on_a_target_without_avx512(tmp_path):
    """An AVX2 machine gets one-register vectors and the same products (the CPU features of this
    host with every AVX-512 feature turned off, compiled in a fresh process and cache)."""
    features = llvm.get_host_cpu_features().flatten().split(",")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path),
               NUMBA_CPU_FEATURES=",".join(f.replace("+avx512", "-avx512") for f in features))
    run = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
