"""The mask description (tattn_numba.mask) and the device seam: one rule, read by every consumer."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tattn_numba as ta
from tattn_numba import _registry
from tattn_numba.mask import Mask, check_mask, key_range, key_range_jit

from conftest import _gpu_usable


def _implementations():
    """Every registered (method, device), CUDA skipped without the simulator or a GPU."""
    params = []
    for method, device in _registry.available():
        usable = device == "cpu" or _gpu_usable()
        params.append(pytest.param({"method": method, "device": device}, id=f"{method}-{device}",
                                   marks=() if usable else (pytest.mark.skip(reason="no usable GPU"),)))
    return params

MASKS = [Mask(), Mask(causal=True)]


def _sees(mask: Mask, i: int, j: int, m: int) -> bool:
    """Brute force, written plainly: does query row i see key row j (of m)?"""
    return j < m and (not mask.causal or j <= i)


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.describe())
@given(n=st.integers(1, 12), extra1=st.integers(0, 3), extra2=st.integers(0, 3))
@settings(max_examples=30, deadline=None)
def test_boxes_match_brute_force(mask, n, extra1, extra2):
    m1, m2 = (n, n) if mask.causal else (n + extra1, n + extra2)
    (lo1, hi1), (lo2, hi2) = mask.key_ranges(n, m1, m2)
    (start1, stop1), (start2, stop2) = mask.query_ranges(n, m1, m2)
    count1, count2 = mask.pair_counts(n, m1, m2)
    causal, width1, width2 = mask.kernel_args(m1, m2)
    for lo, hi, start, stop, count, m, width in ((lo1, hi1, start1, stop1, count1, m1, width1),
                                                 (lo2, hi2, start2, stop2, count2, m2, width2)):
        for i in range(n):
            seen = [j for j in range(m) if _sees(mask, i, j, m)]
            assert list(range(lo[i], hi[i])) == seen
            assert count[i] == len(seen)
            assert key_range(causal, width, i, m) == (lo[i], hi[i]) == key_range_jit(causal, width, i, m)
        for j in range(m):
            assert list(range(start[j], stop[j])) == [i for i in range(n) if _sees(mask, i, j, m)]
        assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)  # what the GPU block bounds rely on


def test_check_mask_errors_name_the_argument():
    assert check_mask(None, False) == Mask()
    assert check_mask(None, True) == Mask(causal=True)
    assert check_mask(Mask(causal=True), False) == Mask(causal=True)
    with pytest.raises(TypeError, match="causal must be a bool, got int"):
        check_mask(None, 1)
    with pytest.raises(TypeError, match="mask must be a tattn_numba.Mask or None, got str"):
        check_mask("causal", False)
    with pytest.raises(ValueError, match="either mask= or causal=True, not both"):
        check_mask(Mask(), True)
    with pytest.raises(TypeError, match="causal must be a bool, got str"):
        Mask(causal="yes")
    with pytest.raises(ValueError, match="causal=True needs n == m1 == m2"):
        Mask(causal=True).check_shapes(4, 5, 4)


@pytest.mark.parametrize("impl", _implementations())
def test_mask_keyword_equals_causal_shorthand(impl):
    rng = np.random.default_rng(3)
    X = [rng.standard_normal((2, 6, 3)) * 0.5 for _ in range(5)]
    dO = rng.standard_normal((2, 6, 3))
    options = {"degree": 4} if impl["method"] == "poly" else {}
    O, state = ta.attention_forward(*X, mask=ta.Mask(causal=True), **impl, **options)
    O_short = ta.attention(*X, causal=True, **impl, **options)
    np.testing.assert_array_equal(O, O_short)
    assert state.mask == ta.Mask(causal=True) and state.causal is True
    grads = ta.attention_backward(state, dO)
    short = ta.attention_grad(*X, dO, causal=True, **impl, **options)
    for g, h in zip(grads, short):  # CUDA's key gradients sum with atomics: last bits vary
        np.testing.assert_allclose(g, h, rtol=1e-13, atol=1e-16)
    with pytest.raises(ValueError, match="either mask= or causal=True"):
        ta.attention(*X, mask=ta.Mask(), causal=True, **impl, **options)


def test_registry_gives_each_device_its_array_operations():
    from tattn_numba._host import HostArrays

    assert isinstance(_registry.array_ops("cpu"), HostArrays)
    assert set(_registry.DEVICES) == {"cpu", "cuda"}
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        _registry.array_ops("tpu")
    with pytest.raises(TypeError, match="device must be a string, got int"):
        _registry.array_ops(0)


def test_no_device_branches_outside_the_registry_and_device_modules():
    """The public layer calls the device's array operations instead of comparing with "cuda"."""
    package = pathlib.Path(ta.__file__).parent
    allowed = {"_registry.py", "_device.py", "_cuda.py", "exact/cuda.py", "poly/cuda.py", "poly/_cuda_kernels.py",
               "poly/_cuda_gemm.py"}
    pattern = re.compile(r"""[=!]=\s*["']cuda["']|["']cuda["']\s*[=!]=""")
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if str(path.relative_to(package)) not in allowed and pattern.search(path.read_text())]
    assert offenders == []
