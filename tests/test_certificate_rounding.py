"""The floating-point terms of the surrogate's certificates (tattn_numba/poly/rounding.py).

Regression cases from the certificate issue, each named after what broke, plus the two
promises around them: the bounds are not loosened into uselessness (a tightness factor on a
bad case; the benign degree does not move) and refusals name the caller's tolerance, the floor
and its cause. The adversarial search over structured inputs is tests/test_certificate_adversarial.py.
"""

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba.poly import exp_approx
from tattn_numba.poly.plan import epsilon_for_tolerance, value_ranges

from reference import dense_attention, dense_attention_grad


def attention_reference(*args, **kwargs):
    return dense_attention(*args, **kwargs)[0]


def _assert_within(error, bound, what):
    over = error > bound
    assert not np.any(over), (
        f"{what}: {int(over.sum())} entries over their bound, worst ratio "
        f"{float(np.max(np.where(bound > 0, error / np.where(bound > 0, bound, 1), np.inf)[over])):.3g}"
    )


def _edge_inputs(rng, n, m, radius, dtype=np.float64):
    """d = 1, every logit within 0.1% of the row interval's lower edge −R, near-constant values."""
    Q = -rng.uniform(0.999, 1.0, (n, 1))
    K1, K2 = np.ones((m, 1)), np.ones((m, 1))
    V1 = 1.0 + 1e-5 * rng.standard_normal((m, 2))
    V2 = 1.0 + 1e-5 * rng.standard_normal((m, 2))
    return tuple(x.astype(dtype) for x in (Q, K1, K2, V1, V2)), radius


def _check_everything(Q, K1, K2, V1, V2, *, causal=False, **options):
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", causal=causal, **options)
    wide = [x.astype(np.float64) for x in (Q, K1, K2, V1, V2)]
    scale = options.get("scale")
    exact = attention_reference(*wide, scale=scale, causal=causal)
    _assert_within(np.abs(O.astype(np.float64) - exact), state.certificate.output_bound, "output")
    dO = np.random.default_rng(5).standard_normal(O.shape).astype(Q.dtype)
    grads = ta.attention_backward(state, dO)
    bounds = ta.poly_gradient_bounds(state, dO)
    for name, g, e, b in zip(ta.AttentionGrads._fields, grads,
                             dense_attention_grad(*wide, dO.astype(np.float64), scale=scale, causal=causal),
                             bounds):
        _assert_within(np.abs(g.astype(np.float64) - e), b, name)
    return state


@pytest.mark.parametrize("family", ["chebyshev", "taylor"])
@pytest.mark.parametrize("radius", [4.0, 8.0, 11.0])
def test_regression_logits_at_the_lower_edge_with_near_constant_values(family, radius):
    """Was: R ≈ 15, logits at −R, V ≈ 1 + 1e-5·noise: bound 5.7e-5, error 8.4e-3 (147x). The
    rounding of numerator and normaliser is now in the bound, or the input is refused."""
    (Q, K1, K2, V1, V2), R = _edge_inputs(np.random.default_rng(1), 12, 9, radius)
    state = _check_everything(Q, K1, K2, V1, V2, scale=R, family=family, tol=1e-1 if radius > 10 else 1e-5)
    assert state.certificate.rounding_bound.max() > 0.0


def test_regression_radius_15_is_refused_naming_the_tolerance():
    (Q, K1, K2, V1, V2), R = _edge_inputs(np.random.default_rng(2), 6, 5, 15.0)
    with pytest.raises(ValueError, match=r"tol=0\.0001 .*unreachable.*e\^\(2R\)"):
        ta.attention_forward(Q, K1, K2, V1, V2, method="poly", scale=R, tol=1e-4)


@pytest.mark.parametrize("radius", [2.0, 6.0, 9.0])
def test_regression_single_key_pair_gets_a_nonzero_bound(radius):
    """Was: m1 = m2 = 1 (O = V1·V2 exactly), logit −R: bound 0, error up to 3e-5 at R = 14."""
    rng = np.random.default_rng(3)
    Q = -np.ones((5, 1))
    K1, K2 = np.ones((1, 1)), np.ones((1, 1))
    V1, V2 = rng.standard_normal((1, 3)), rng.standard_normal((1, 3))
    state = _check_everything(Q, K1, K2, V1, V2, scale=radius, degree=exp_approx.min_degree("chebyshev", radius, 0.5))
    assert np.all(state.certificate.output_bound > 0.0)


def test_regression_large_common_value_offset():
    """Was: V = 1e6 + noise at tol = 1e-12, bounds exceeded up to 1e5x. Now refused at tight
    tolerances (naming the value magnitude) and certified at loose ones."""
    rng = np.random.default_rng(4)
    Q, K1, K2 = (rng.uniform(-1, 1, (8, 4)) for _ in range(3))
    V1, V2 = 1e6 + rng.standard_normal((8, 3)), 1e6 + rng.standard_normal((8, 3))
    with pytest.raises(ValueError, match=r"tol=1e-12"):
        ta.attention_forward(Q, K1, K2, V1, V2, method="poly", tol=1e-12)
    with pytest.raises(ValueError, match=r"tol=0\.001 .*max\|V1·V2\| = 1e\+12"):
        ta.attention_forward(Q, K1, K2, V1, V2, method="poly", tol=1e-3)
    _check_everything(Q, K1, K2, V1, V2, tol=1.0)


def test_regression_float32_tolerance_below_its_resolution_is_refused():
    """Was: float32 inputs with tol = 1e-9 got a float64 certificate (9.4e-10 against a true
    error of 5.9e-8); dV1 exceeded its bound in 29 of 72 entries."""
    rng = np.random.default_rng(5)
    X = [rng.uniform(-1, 1, (8, 4)).astype(np.float32) for _ in range(5)]
    with pytest.raises(ValueError, match=r"tol=1e-09 .*float32 output"):
        ta.attention_forward(*X, method="poly", tol=1e-9)
    state = _check_everything(*X, tol=1e-6)
    assert state.certificate.rounding_bound.min() > 2.0**-24 * 1e-3


def test_regression_causal_constant_keys():
    """Was: constant keys (exact dQ = 0), causal, n = 8192: surrogate dQ 6.7e-14 against a bound
    of 2.4e-15 (the scans' downdating was not in the bound). Smaller n with a small chunk, so
    the downdating runs across many chunks."""
    rng = np.random.default_rng(6)
    n = 200
    Q = rng.uniform(-1, 1, (n, 4))
    K = np.ones((n, 4))
    V1, V2 = rng.uniform(-1, 1, (n, 2)), rng.uniform(-1, 1, (n, 2))
    from tattn_numba import config

    old = config.POLY_CHUNK_ROWS
    config.POLY_CHUNK_ROWS = 48
    try:
        _check_everything(Q, K, K.copy(), V1, V2, causal=True, tol=1e-6)
    finally:
        config.POLY_CHUNK_ROWS = old


def test_tightness_on_the_lower_edge_case():
    """Not a bound made loose enough to be useless: on the worst case above (logits at −R with
    R = 11, where rounding dominates), the certified rounding is within 2·10^4 of the error seen
    (measured 7.0e3; the worst-case γ_K of a running-error bound against the ~√K growth of
    actual rounding, docs/math/rounding.rst)."""
    (Q, K1, K2, V1, V2), R = _edge_inputs(np.random.default_rng(1), 16, 12, 11.0)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, method="poly", scale=R, tol=1e-3)
    error = float(np.abs(O - attention_reference(Q, K1, K2, V1, V2, scale=R)).max())
    bound = float(state.certificate.rounding_bound.max())
    assert error <= bound <= 2e4 * error


@pytest.mark.parametrize("n", [256, 4096])
def test_benign_degree_does_not_move(n):
    """The accuracy probe's benign inputs (entries uniform in [−1, 1], d = 8, tol = 1e-6): the
    degree chosen with rounding in the bound equals the one the polynomial error alone needs."""
    rng = np.random.default_rng(7)
    X = [rng.uniform(-1, 1, (n, 8)) for _ in range(5)]
    plan = ta.poly_plan(*X, tol=1e-6)
    widest = float(value_ranges(X[3][None], X[4][None]).max())
    alone = exp_approx.min_degree("chebyshev", float(plan.radius.max()), epsilon_for_tolerance(1e-6, widest))
    assert plan.degree <= alone + 1
    assert plan.rounding_bound.max() < 1e-3 * plan.max_output_bound


def test_refusal_names_user_tolerance_not_an_internal_one():
    """Was: tol=1e-10 reported as "tol=6.28e-12 is unreachable"; a value range of 1e154 as
    "tol must be finite and > 0, got 0.0"."""
    rng = np.random.default_rng(8)
    X = [rng.uniform(-2, 2, (16, 4)) for _ in range(5)]
    with pytest.raises(ValueError, match=r"^tol=1e-10 "):
        ta.attention_forward(*X, method="poly", tol=1e-10)
    V1 = rng.uniform(-1e77, 1e77, (16, 2))
    with pytest.raises(ValueError, match=r"^tol=1e-06 .*span"):
        ta.attention_forward(X[0], X[1], X[2], V1, V1.copy(), method="poly", tol=1e-6)


def test_plan_and_forward_certify_the_same_bound():
    rng = np.random.default_rng(9)
    X = [rng.uniform(-1, 1, (2, 32, 3)).astype(np.float32) for _ in range(5)]
    plan = ta.poly_plan(*X, tol=1e-5, causal=True)
    _, state = ta.attention_forward(*X, method="poly", tol=1e-5, causal=True)
    np.testing.assert_array_equal(plan.output_bound, state.certificate.output_bound)
    np.testing.assert_array_equal(plan.rounding_bound, state.certificate.rounding_bound)


def test_regression_overflowing_radius_or_values_refused_without_warnings():
    """Q·K1 ≈ 1e320 with K2 ≈ 1e-300 (true logits ≈ 1e20), and values whose pair products
    overflow: clear refusals, no overflow warnings and no "span nan"."""
    import warnings

    rng = np.random.default_rng(10)
    Q, K1 = rng.uniform(-1, 1, (4, 3)) * 1e160, rng.uniform(-1, 1, (4, 3)) * 1e160
    K2, V = rng.uniform(-1, 1, (4, 3)) * 1e-300, rng.uniform(-1, 1, (4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="logit radius .* overflows float64"):
            ta.attention(Q, K1, K2, V, V, method="poly", tol=1e-3)
        with pytest.raises(ValueError, match="pair products .* overflow float64"):
            ta.attention(Q / 1e160, K1 / 1e160, K2 * 1e300, V * 1e160, V * 1e160, method="poly", tol=1e-3)


def test_regression_float32_results_in_the_subnormal_range():
    """Values 1e-21 (products 1e-42, below float32's smallest normal 1.2e-38): the cast of a
    float32 result there is off by up to 2^-150 absolutely, far more than eps32 of it; the output
    and gradient bounds carry that half subnormal spacing."""
    rng = np.random.default_rng(31)
    Q, K1, K2 = (rng.uniform(-0.5, 0.5, (6, 2)).astype(np.float32) for _ in range(3))
    V1, V2 = ((1e-21 * rng.uniform(0.5, 1.5, (6, 2))).astype(np.float32) for _ in range(2))
    state = _check_everything(Q, K1, K2, V1, V2, degree=6)
    assert np.all(state.certificate.output_bound >= 2.0**-150)
