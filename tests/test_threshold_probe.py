"""The threshold probe for attention over t = 1, 2, 3 key sets: the entry bound (ln n)^{1/(t+1)},
the certified degree and rank it reads from the n-way plan, and the transition it reports."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tattn_numba as ta
from verification import bounds
from verification.probes import threshold


@pytest.mark.parametrize("t", [1, 2, 3])
def test_entry_threshold_is_the_t_plus_first_root_of_ln_n(t):
    assert bounds.entry_threshold(4096, t) == pytest.approx(math.log(4096) ** (1 / (t + 1)), rel=1e-15)
    assert bounds.entry_threshold(4096) == bounds.entry_threshold(4096, 2)


def test_epsilon_for_output_tolerance_uses_the_range_of_the_tuple_products():
    """Three value columns in [−2, 1], [0.5, 3], [−1, 1]: the products span [−6, 6], range 12."""
    V = [np.array([[-2.0], [1.0]]), np.array([[0.5], [3.0]]), np.array([[-1.0], [1.0]])]
    eps = bounds.epsilon_for_output_tolerance(1e-3, *V)
    assert bounds.output_bound(eps, 12.0) == pytest.approx(1e-3, rel=1e-9)


@pytest.mark.parametrize("t", [1, 2, 3])
def test_sweep_point_agrees_with_the_plan(t):
    row = threshold.sweep_point(512, 3, 1.0, 0.5, "chebyshev", t)
    assert row["t"] == t and row["B"] == pytest.approx(0.5 * math.log(512) ** (1 / (t + 1)))
    assert row["certifiable"]
    # the degree the probe reports certifies ε = 1/n with the plan itself
    rng = np.random.default_rng([0, t, 512, 500])
    B = row["B"]
    Q = rng.uniform(-B, B, (512, 3))
    keys = tuple(rng.uniform(-B, B, (512, 3)) for _ in range(t))
    values = tuple(rng.uniform(-B, B, (512, 3)) for _ in range(t))
    plan = ta.nway_poly_plan(Q, keys, values, degree=row["degree"])
    assert plan.rank == row["rank"] == math.comb(3 + row["degree"], row["degree"])
    assert plan.max_output_bound <= 1.0 / 512 * 1.01


def test_tiny_run_shows_the_transition_at_every_order():
    with ThreadPoolExecutor(1) as executor:
        results = threshold.run(threshold.PRESETS["tiny"], executor)
    assert {s["t"] for s in results["summary"].values()} == {1, 2, 3}
    for s in results["summary"].values():
        assert s["fast_up_to_multiplier"] is not None and s["fast_up_to_multiplier"] >= 0.25, s
        assert s["lost_from_multiplier"] is not None and s["lost_from_multiplier"] > 0.3, s
