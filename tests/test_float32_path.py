"""The exact CPU kernels compute float32 inputs in float32 (issue #14), held to FlashAttention's rule.

Rule (tests/reference.py ``float32_tolerance``): for the output, lse and every gradient, the
error against the dense float64 reference is at most twice the error of the plain float32
implementation of the same formulas, plus a floor of 4·eps32·(1 + L)·Σ|terms| (L the largest sum
of absolute logit terms: a float32 logit is rounded at ~eps32·L, whoever computes it).

The inputs are the ones where a float32 computation is weakest: long sums (near-constant logits
spread the weight over every pair of a 192 × 192 key grid, crossing tile boundaries), saturated
softmax with large logits, one dominant pair, values with a large common offset (dS − δ cancels),
and the causal mask; plus the fall-back to float64 for inputs whose products would overflow
float32, and the vectorised float32 exp against libm.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import tattn_numba as ta
from reference import EPS32, assert_forward_matches, assert_grads_match, dense_attention, dense_attention_grad
from tattn_numba._validation import check_attention_inputs
from tattn_numba.exact import cpu

pytestmark = pytest.mark.usefixtures("warm_kernels")

N, M, D, DV = 24, 192, 16, 8


# --- the float32 exp ----------------------------------------------------------------------

def test_float32_exp_within_one_ulp_of_libm():
    """Measured 0.61 ulp against the correctly rounded exp on [-87, 0]."""
    x = np.concatenate([-np.geomspace(1e-8, 87.0, 200_001), [0.0, -0.5, -np.log(2) / 2, -87.0]]).astype(np.float32)
    buf = x.copy()
    total = cpu._exp_shifted(buf, buf.size, 1.0, 0.0)
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(buf.astype(np.float64) / exact - 1.0)
    assert rel.max() <= EPS32, rel.max() / EPS32
    assert total == pytest.approx(buf.astype(np.float64).sum(), rel=1e-12)


def test_float32_exp_scales_and_shifts_in_float64():
    """exp(scale·x − shift) with the argument formed in float64: a shift of 1e4 next to logits of
    1e4 loses nothing to float32 rounding of the difference."""
    x = (1e4 + np.arange(-20, 1, dtype=np.float64) / 8).astype(np.float32)
    buf = x.copy()
    cpu._exp_shifted(buf, buf.size, 0.5, 5000.0)
    expected = np.exp(0.5 * x.astype(np.float64) - 5000.0)
    np.testing.assert_allclose(buf, expected, rtol=2 * EPS32)


def test_forward_exp_subtracts_its_float32_running_maximum_exactly():
    """The forward's exp forms scale·x − M in float32, M a float32 number (the running maximum is
    kept one): a maximum of 5000 next to logits of 1e4 loses nothing to the subtraction, and a
    scale float32 cannot hold costs one relative rounding of the logit."""
    x = (1e4 + np.arange(-20, 1, dtype=np.float64) / 8).astype(np.float32)
    shift = np.float64(np.float32(5000.0))
    for scale in (0.5, 1.0 / 3.0):
        buf = x.copy()
        total = cpu._exp_running32(buf, buf.size, scale, shift)
        expected = np.exp(np.float64(np.float32(scale)) * x.astype(np.float64) - shift)
        np.testing.assert_allclose(buf, expected, rtol=2 * EPS32)
        assert total == pytest.approx(buf.astype(np.float64).sum(), rel=1e-12)
    # the running maximum the forward keeps is a float32 number for float32 tiles only
    logit_max = 10000.123456789
    assert _kept_maximum(x, logit_max) == float(np.float32(logit_max)) != logit_max
    assert _kept_maximum(x.astype(np.float64), logit_max) == logit_max


@numba.njit
def _kept_maximum(tile, value):
    return cpu._running_shift(tile, value)


def test_float32_exp_flushes_below_its_floor_to_zero():
    """Regression (hypothesis): logits 0 and −2000 in float32; the clamped exp returned 1.6e-38
    for the second pair, and dQ came out 1.3e-41 where the reference is exactly 0."""
    buf = np.array([-86.9, -87.5, -2000.0, -1e30], dtype=np.float32)
    cpu._exp_shifted(buf, buf.size, 1.0, 0.0)
    assert buf[0] > 0.0 and np.all(buf[1:] == 0.0)
    Q, K1 = np.float32([[20.0]]), np.float32([[10.0]])
    K2, V1, V2 = np.float32([[0.0], [-10.0]]), np.float32([[-10.0]]), np.float32([[-20.0], [-20.0]])
    dO = np.float32([[-0.5356694]])
    grads = ta.attention_grad(Q, K1, K2, V1, V2, dO)
    assert grads.dQ[0, 0] == 0.0
    assert_grads_match(grads, Q, K1, K2, V1, V2, dO)


# --- which precision -----------------------------------------------------------------------

def _precision(*arrays, scale=None, dO=None):
    return cpu.precision(check_attention_inputs(*arrays, scale, False), dO)


def test_float32_inputs_are_computed_in_float32():
    rng = np.random.default_rng(0)
    X = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(5)]
    assert _precision(*X) == cpu.Precision(np.dtype(np.float32), False)
    assert _precision(*(x.astype(np.float64) for x in X)) == cpu.Precision(np.dtype(np.float64), False)


def test_products_beyond_the_float32_limit_fall_back_to_float64():
    """Entries 1e7 with scale 1: logits ~1e21, past FLOAT32_COMPUTE_LIMIT (2^64 ≈ 1.8e19) scaled or
    not; the kernels then compute in float64 (copies) and the results stay finite and right."""
    rng = np.random.default_rng(1)
    Q = (1e7 * rng.uniform(-1, 1, (5, 3))).astype(np.float32)
    K1, K2 = ((1e7 * rng.uniform(-1, 1, (6, 3))).astype(np.float32) for _ in range(2))
    V1, V2, dO = (rng.standard_normal(s).astype(np.float32) for s in ((6, 2), (6, 2), (5, 2)))
    scale = 1.0
    assert _precision(Q, K1, K2, V1, V2, scale=scale) == cpu.Precision(np.dtype(np.float64), False)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, scale=scale)
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, scale=scale)
    assert_grads_match(ta.attention_backward(state, dO), Q, K1, K2, V1, V2, dO, scale=scale)


def test_small_scale_folds_into_the_query_row():
    """Entries 1e12 with scale 1e-36: the unscaled products (1e36) pass the float32 limit but the
    scaled ones do not, so the scale multiplies the query row first and float32 is kept."""
    rng = np.random.default_rng(2)
    Q, K1, K2 = ((1e12 * rng.uniform(-1, 1, (4, 2))).astype(np.float32) for _ in range(3))
    V1, V2, dO = (rng.standard_normal((4, 2)).astype(np.float32) for _ in range(3))
    scale = 1e-36
    assert _precision(Q, K1, K2, V1, V2, scale=scale) == cpu.Precision(np.dtype(np.float32), True)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, scale=scale)
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, scale=scale)
    assert_grads_match(ta.attention_backward(state, dO), Q, K1, K2, V1, V2, dO, scale=scale)


def test_large_upstream_gradient_falls_back_to_float64_for_the_backward():
    rng = np.random.default_rng(3)
    X = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(5)]
    dO = (1e15 * rng.standard_normal((4, 2))).astype(np.float32)
    X[3] *= np.float32(1e5)  # dO·V1·V2 ~ 1e20: above 2^64, finite in float32
    assert _precision(*X).dtype == np.float32
    assert _precision(*X, dO=dO[None]).dtype == np.float64
    assert_grads_match(ta.attention_grad(*X, dO), *X, dO)


# --- accuracy where float32 is weakest -----------------------------------------------------

def _case(kind, rng, n=N, m=M):
    shapes = [(n, D), (m, D), (m, D), (m, DV), (m, DV), (n, DV)]
    Q, K1, K2, V1, V2, dO = (rng.standard_normal(s) for s in shapes)
    scale = None
    if kind == "near_constant_logits":  # every pair weighs ~1/M²: the longest sums
        Q *= 1e-3
    elif kind == "saturated":  # logits in the hundreds: one-hot rows, P rounded at eps32·L
        Q, K1, K2 = (3.0 * np.sign(x) + 0.3 * x for x in (Q, K1, K2))
        scale = 1.0
    elif kind == "single_dominant_pair":  # one pair 30 above all others in every row
        K1[7] = K2[11] = 0.0
        K1[7, 0] = K2[11, 0] = 1.0
        Q[:, 0] = 30.0 * D
    elif kind == "value_offset":  # V1 ∘ V2 ≈ 1e4 + noise: dS − δ cancels to 4 digits
        V1, V2 = 100.0 + 0.01 * V1, 100.0 + 0.01 * V2
    return [x.astype(np.float32) for x in (Q, K1, K2, V1, V2, dO)], scale


KINDS = ["random", "near_constant_logits", "saturated", "single_dominant_pair", "value_offset"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
def test_flash_attention_rule_on_hostile_inputs(kind, causal):
    rng = np.random.default_rng(KINDS.index(kind))
    X, scale = _case(kind, rng, *((96, 96) if causal else (N, M)))  # causal: self-attention shapes
    O, state = ta.attention_forward(*X[:5], scale=scale, causal=causal)
    assert O.dtype == np.float32
    assert_forward_matches(O, state.lse, *X[:5], scale=scale, causal=causal)
    assert_grads_match(ta.attention_backward(state, X[5]), *X[:5], X[5], scale=scale, causal=causal)


@pytest.mark.parametrize("kind", ["random", "saturated", "single_dominant_pair"])
def test_flash_attention_rule_with_a_scale_float32_cannot_hold(kind):
    """scale = 1/3 is rounded to float32 in the forward's exp argument (every logit times the same
    1 + δ, |δ| <= eps32/2) while the backward scales in float64: the rule still holds, also where
    logits are in the hundreds."""
    rng = np.random.default_rng(11 + KINDS.index(kind))
    X, _ = _case(kind, rng)
    O, state = ta.attention_forward(*X[:5], scale=1.0 / 3.0)
    assert_forward_matches(O, state.lse, *X[:5], scale=1.0 / 3.0)
    assert_grads_match(ta.attention_backward(state, X[5]), *X[:5], X[5], scale=1.0 / 3.0)


def test_float32_path_is_not_float64_in_disguise():
    """The float32 result differs from the rounded float64 result (so the float32 path really
    runs), yet by no more than the rule allows; and float64 inputs are untouched by it."""
    rng = np.random.default_rng(7)
    X, _ = _case("random", rng)
    O32 = ta.attention(*X[:5])
    O64 = ta.attention(*(x.astype(np.float64) for x in X[:5]))
    assert not np.array_equal(O32, O64.astype(np.float32))
    ref, _ = dense_attention(*X[:5])
    np.testing.assert_allclose(O64, ref, rtol=1e-11, atol=1e-12)
    g64 = ta.attention_grad(*(x.astype(np.float64) for x in X))
    for a, b in zip(g64, dense_attention_grad(*X)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


# --- the same on the GPU kernels (tiny shapes: the simulator runs every thread in Python) -------

def _cuda_or_skip():
    from tattn_numba import _cuda

    pytest.importorskip("numba_cuda")
    try:
        _cuda.require()
    except _cuda.CUDAUnavailableError as exc:  # pragma: no cover - only with NUMBA_ENABLE_CUDASIM=0 and no GPU
        pytest.skip(f"CUDA unusable here: {exc}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
def test_flash_attention_rule_on_hostile_inputs_cuda(kind, causal):
    _cuda_or_skip()
    rng = np.random.default_rng(100 + KINDS.index(kind))
    X, scale = _case(kind, rng, *((12, 12) if causal else (5, 13)))
    O, state = ta.attention_forward(*X[:5], scale=scale, causal=causal, device="cuda")
    assert O.dtype == np.float32
    assert_forward_matches(O, state.lse, *X[:5], scale=scale, causal=causal)
    assert_grads_match(ta.attention_backward(state, X[5]), *X[:5], X[5], scale=scale, causal=causal)


def test_cuda_precision_follows_the_cpu_rule():
    """float32 inputs run the float32 kernels; too large for float32, or needing the scale folded
    (which only the float64 kernels do), the float64 ones; results right in both cases."""
    _cuda_or_skip()
    from tattn_numba.exact import cuda as exact_cuda

    rng = np.random.default_rng(8)
    X = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(6)]
    big = [(1e7 * x).astype(np.float32) if k < 3 else x for k, x in enumerate(X)]
    tiny_scale = [(1e12 * x).astype(np.float32) if k < 3 else x for k, x in enumerate(X)]
    for arrays, scale, expected in ((X, None, np.float32), (big, 1.0, np.float64), (tiny_scale, 1e-36, np.float64)):
        inputs = check_attention_inputs(*arrays[:5], scale, False, device="cuda")
        assert exact_cuda.precision(inputs).dtype == expected
        O, state = ta.attention_forward(*arrays[:5], scale=scale, device="cuda")
        assert_forward_matches(O, state.lse, *arrays[:5], scale=scale)
        assert_grads_match(ta.attention_backward(state, arrays[5]), *arrays[:5], arrays[5], scale=scale)
