"""One option set for the surrogate: every entry point refuses a wrong option the same way."""

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba._validation import check_attention_inputs
from tattn_numba.poly.options import PolyOptions
from tattn_numba.poly.plan import make_plan

CASES = [
    ({"tol": 1e-3, "family": 3}, TypeError, "family must be a str"),
    ({"tol": 1e-3, "family": "legendre"}, ValueError, "family must be one of .*'legendre'"),
    ({"degree": 2.5}, TypeError, "degree must be a non-negative integer"),
    ({"degree": -1}, ValueError, "degree must be >= 0"),
    ({"degree": 300}, ValueError, "MAX_DEGREE"),
    ({"tol": "1e-3"}, TypeError, "tol must be a positive real number"),
    ({"tol": 0.0}, ValueError, "tol must be positive and finite"),
    ({"tol": 1e-3, "degree": 3}, ValueError, "exactly one of tol"),
    ({}, ValueError, "exactly one of tol"),
    ({"tol": 1e-3, "memory_budget": "1GB"}, TypeError, "memory_budget must be a positive whole number"),
    ({"tol": 1e-3, "memory_budget": 2.5}, ValueError, "memory_budget must be a positive whole number"),
    ({"tol": 1e-3, "memory_budget": True}, TypeError, "memory_budget"),
]


def _inputs():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (6, 3)) for _ in range(5)]


@pytest.mark.parametrize(("options", "error", "message"), CASES)
def test_every_entry_point_refuses_alike(options, error, message):
    X = _inputs()
    with pytest.raises(error, match=message):
        PolyOptions(**options)
    with pytest.raises(error, match=message):
        ta.attention(*X, method="poly", **options)
    with pytest.raises(error, match=message):
        ta.poly_plan(*X, **options)
    with pytest.raises(error, match=message):
        make_plan(check_attention_inputs(*X, None, False), **options)


def test_normalised_values():
    options = PolyOptions(degree=np.int64(3), family=None, memory_budget=1.5e9)
    assert (options.degree, options.family, options.memory_budget) == (3, "chebyshev", 1_500_000_000)
    assert type(options.degree) is int and type(options.memory_budget) is int


@pytest.mark.parametrize(("options", "error", "message"), CASES)
def test_paper_refuses_alike(options, error, message):
    from tattn_numba import paper

    rng = np.random.default_rng(1)
    A = [rng.uniform(-1, 1, (4, 2)) for _ in range(6)]
    X, Y = rng.uniform(-1, 1, (2, 4)), rng.uniform(-1, 1, (4, 2))
    with pytest.raises(error, match=message):
        paper.loss(*A, X, Y, method="poly", **options)
