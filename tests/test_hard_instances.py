"""Planted Gap-3-MaxIP instances and their attention embeddings (verification.hard_instances, SPEC §6).

The ground truth here is dense: all n³ inner products and all logits by one plain einsum.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba import paper
from verification import hard_instances as hi


def dense_inner_products(inst: hi.MaxIPInstance) -> np.ndarray:
    """T[i, j, k] = ⟨a_i, b_j, c_k⟩ over all n³ triples."""
    return np.einsum("il,jl,kl->ijk", inst.a, inst.b, inst.c)


def dense_logits(Q, K1, K2, scale) -> np.ndarray:
    """logit[i, j1, j2] = scale·Σ_l Q[i,l] K1[j1,l] K2[j2,l]."""
    return scale * np.einsum("il,jl,kl->ijk", Q, K1, K2)


def exact_output(emb: hi.AttentionEmbedding) -> np.ndarray:
    return ta.attention(emb.Q, emb.K1, emb.K2, emb.V1, emb.V2, scale=emb.scale, method="exact")[:, 0]


SEEDS = [0, 1, 2]
SIZES = [8, 16, 32]


# --------------------------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", SIZES)
def test_yes_instance_has_the_planted_triple_and_the_gap(n, seed):
    inst = hi.gap_maxip_instance(n, "YES", seed=seed)
    T = dense_inner_products(inst)
    i, j, k = inst.planted
    assert T[i, j, k] == inst.t
    T[i, j, k] = -1
    assert T.max() <= (1 - inst.gamma) * inst.t
    assert inst.max_inner_product == inst.t
    assert set(np.unique(inst.a)) <= {0, 1} and inst.a.shape == (n, inst.d0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", SIZES)
def test_no_instance_has_every_triple_below_the_gap(n, seed):
    inst = hi.gap_maxip_instance(n, "NO", seed=seed)
    T = dense_inner_products(inst)
    assert inst.planted is None
    assert T.max() <= (1 - inst.gamma) * inst.t
    assert inst.max_inner_product == T.max()


def test_planted_location_is_random_and_recorded():
    triples = {hi.gap_maxip_instance(16, "YES", seed=s).planted for s in range(6)}
    assert len(triples) > 1


def test_brute_force_matches_dense_and_excludes_the_planted_triple():
    inst = hi.gap_maxip_instance(12, "YES", seed=4)
    T = dense_inner_products(inst)
    assert hi.max_triple_inner_product(inst.a, inst.b, inst.c) == T.max() == inst.t
    T[inst.planted] = -1
    assert hi.max_triple_inner_product(inst.a, inst.b, inst.c, exclude=inst.planted) == T.max()
    np.testing.assert_array_equal(hi.triple_inner_products(inst.a, inst.b, inst.c), dense_inner_products(inst))


def test_defaults_follow_c_log2_n():
    inst = hi.gap_maxip_instance(32, "NO", seed=0)
    assert inst.d0 == math.ceil(2.0 * math.log2(32))
    assert inst.t <= 0.8 * inst.d0
    half = (1 - inst.gamma / 2) * inst.t
    assert half == round(half)  # e is exact, so the SPEC's bounds 4/7 and 1/(4n²) hold


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    first = hi.gap_maxip_instance(16, "YES", seed=7)
    again = hi.gap_maxip_instance(16, "YES", seed=7)
    other = hi.gap_maxip_instance(16, "YES", seed=8)
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.planted == again.planted and first.seed == 7
    assert any(not np.array_equal(getattr(first, name), getattr(other, name)) for name in ("a", "b", "c"))
    emb1, emb2 = hi.constant_gap_embedding(first), hi.constant_gap_embedding(again)
    for name in ("Q", "K1", "K2", "V1", "V2"):
        np.testing.assert_array_equal(getattr(emb1, name), getattr(emb2, name))
    np.testing.assert_array_equal(hi.half_max_embedding(first).A1, hi.half_max_embedding(again).A1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 1}, "n"),
        ({"n": hi.MAX_BRUTE_FORCE_N + 1}, "n"),
        ({"n": 2.5}, "n"),
        ({"d0": 6, "t": 7}, "t"),
        ({"t": 0}, "t"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.0}, "rho"),
        ({"label": "MAYBE"}, "label"),
        ({"c": -1.0}, "c"),
        ({"d0": 0}, "d0"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(kwargs, name):
    args = {"n": 8, "label": "YES", **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        hi.gap_maxip_instance(**args)


def test_impossible_gap_raises_after_max_tries():
    with pytest.raises(ValueError, match="max_tries"):
        hi.gap_maxip_instance(16, "NO", rho=0.9, max_tries=3)


# --------------------------------------------------------------------------------------------
# embedding 1 (constant gap)
# --------------------------------------------------------------------------------------------


def test_entry_bound_and_logits_follow_the_spec_formulas():
    inst = hi.gap_maxip_instance(16, "YES", seed=3)
    emb = hi.constant_gap_embedding(inst)
    n, d0, t, gamma = inst.n, inst.d0, inst.t, inst.gamma
    e = round((1 - gamma / 2) * t)
    beta = 2 * math.log(4 * n**2) / (gamma * t)
    d_tilde = d0 + e
    assert emb.e == e and emb.d_tilde == d_tilde
    assert emb.beta == pytest.approx(beta, rel=1e-15)
    assert emb.entry_bound == pytest.approx((beta * d_tilde) ** (1 / 3), rel=1e-15)
    assert emb.scale == pytest.approx(1 / d_tilde, rel=1e-15)
    assert emb.Q.shape == (n, d_tilde) and emb.K1.shape == emb.K2.shape == (2 * n, d_tilde)
    assert emb.V1.shape == emb.V2.shape == (2 * n, 1)
    for M in (emb.Q, emb.K1, emb.K2):
        assert np.abs(M).max() == pytest.approx(emb.entry_bound, rel=1e-15)
    np.testing.assert_array_equal(emb.V1[:, 0], np.r_[np.ones(n), np.zeros(n)])
    L = dense_logits(emb.Q, emb.K1, emb.K2, emb.scale)
    np.testing.assert_allclose(L[:, :n, :n], beta * dense_inner_products(inst), rtol=1e-12)
    np.testing.assert_allclose(L[:, n:, n:], beta * e, rtol=1e-12)
    assert np.all(L[:, :n, n:] == 0) and np.all(L[:, n:, :n] == 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", SIZES)
def test_exact_kernel_yes_planted_row_reaches_four_sevenths(n, seed):
    emb = hi.constant_gap_embedding(hi.gap_maxip_instance(n, "YES", seed=seed))
    out = exact_output(emb)
    assert out[emb.instance.planted[0]] >= 4 / 7
    assert out[emb.instance.planted[0]] >= emb.yes_bound * (1 - 1e-12)
    assert emb.decide(out) == "YES"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", SIZES)
def test_exact_kernel_no_outputs_stay_below_one_over_four_n_squared(n, seed):
    emb = hi.constant_gap_embedding(hi.gap_maxip_instance(n, "NO", seed=seed))
    out = exact_output(emb)
    assert out.max() <= 1 / (4 * n**2)
    assert emb.no_bound <= 1 / (4 * n**2) * (1 + 1e-12)
    assert emb.decide(out) == "NO"


def test_rounded_e_keeps_its_own_certified_bounds():
    """(1 − γ/2)t = 8.5 is not an integer: e = 8 and the bounds are recomputed from it."""
    for label in hi.LABELS:
        emb = hi.constant_gap_embedding(hi.gap_maxip_instance(16, label, d0=12, t=10, gamma=0.3, seed=1))
        assert emb.e == 8 and emb.no_bound < emb.threshold < emb.yes_bound
        out = exact_output(emb)
        if label == "YES":
            assert out[emb.instance.planted[0]] >= emb.yes_bound * (1 - 1e-12)
        else:
            assert out.max() <= emb.no_bound * (1 + 1e-12)
        assert emb.decide(out) == label


# --------------------------------------------------------------------------------------------
# embedding 2 (half at the maximum) and the gradient identity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", hi.LABELS)
@pytest.mark.parametrize("n", [4, 8, 16])
def test_half_of_each_row_logits_sit_at_the_row_maximum(n, label):
    emb = hi.half_max_embedding(hi.gap_maxip_instance(n, label, seed=2))
    m = n + emb.n_dummy
    assert emb.n_dummy == math.ceil((1 + math.sqrt(2)) * n)
    assert emb.K1.shape == (m, 2 * emb.instance.d0)
    L = dense_logits(emb.Q, emb.K1, emb.K2, emb.scale).reshape(n, -1)
    top = L.max(axis=1)
    np.testing.assert_allclose(top, emb.beta * emb.instance.d0, rtol=1e-12)
    at_max = np.isclose(L, top[:, None], rtol=1e-12, atol=0).mean(axis=1)
    assert np.all(at_max >= 0.5)


def test_paper_problem_is_the_embedded_attention():
    emb = hi.half_max_embedding(hi.gap_maxip_instance(8, "YES", seed=0))
    n, m, d = emb.instance.n, emb.A1.shape[0], emb.A1.shape[1]
    assert emb.S.shape == emb.Y.shape == (d * d, d) and emb.E.shape == (m, d)
    out = paper.output(emb.A1, emb.A2, emb.A3, emb.A4, emb.A5, emb.X(1.0), emb.Y)
    attn = ta.attention(emb.Q, emb.K1, emb.K2, emb.A4, emb.A5, scale=1.0 / d)
    np.testing.assert_allclose(out[:n], attn, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out[n:, 0], (n / m) ** 2, rtol=1e-12)  # zero query rows: uniform weights
    assert np.all(out[:, 1:] == 0)
    assert paper.loss(*emb.paper_args(1.0)) == pytest.approx(0.5 * float(np.sum(out**2)), rel=1e-12)


def test_gauss_legendre_quadrature_of_the_gradient_gives_the_loss_difference():
    """Loss(1) − Loss(0) = ∫₀¹ ⟨dLoss/dX(λ), Sᵀ⟩ dλ; the quadrature converges geometrically (1e-6 at 32 nodes)."""
    emb = hi.half_max_embedding(hi.gap_maxip_instance(8, "NO", seed=0))
    difference = paper.loss(*emb.paper_args(1.0)) - paper.loss(*emb.paper_args(0.0))
    errors = []
    for k in (8, 16, 32):
        x, w = np.polynomial.legendre.leggauss(k)
        value = sum(0.5 * wi * np.sum(paper.grad_X(*emb.paper_args(0.5 * (xi + 1))) * emb.S.T)
                    for xi, wi in zip(x, w))
        errors.append(abs(value - difference) / abs(difference))
    assert errors[0] > errors[1] > errors[2]
    assert errors[-1] <= 1e-6
