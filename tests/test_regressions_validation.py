"""Named regression cases for reported validation and aliasing bugs (each a past failure).

* np.matrix, ragged nested lists and numpy.ma.MaskedArray operands gave errors from deep inside
  (``not enough values to unpack``, ``einstein sum subscripts``, NumPy's inhomogeneous-shape
  message) or, for masked arrays, silently used the hidden values.
* The overflow message of a result suggested "(or use float64)" to float64 callers.
* The logit-range check multiplied column maxima and reported "bound inf" for logits ≈ 1e20.
* ``attention_forward``'s O (and ``state.lse``) was the memory the backward reads: ``O += 1``
  silently changed the gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import tattn_numba as ta
from reference import dense_attention, make_inputs
from tattn_numba._validation import check_logit_range

pytestmark = pytest.mark.usefixtures("warm_kernels")

NAMES = ("Q", "K1", "K2", "V1", "V2")
N, M1, M2, D, DV = 3, 4, 5, 2, 3


def _inputs(dtype=np.float64, batch=(), seed=0):
    return make_inputs(np.random.default_rng(seed), batch, N, M1, M2, D, DV, dtype, with_dO=True)


def _replace(X, name, value):
    Y = list(X)
    Y[NAMES.index(name)] = value
    return Y


# --- 1. np.matrix, ragged lists, masked arrays ----------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_regression_matrix_operand_is_used_as_its_2d_array(name):
    *X, dO = _inputs()
    ref = ta.attention(*X)
    Y = _replace(X, name, np.matrix(X[NAMES.index(name)]))
    O = ta.attention(*Y)
    assert type(O) is np.ndarray and O.shape == ref.shape
    np.testing.assert_array_equal(O, ref)
    grads = ta.attention_grad(*Y, dO)
    for g, r in zip(grads, ta.attention_grad(*X, dO)):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, r)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_regression_matrix_upstream_gradient_is_used_as_its_2d_array():
    *X, dO = _inputs()
    _, state = ta.attention_forward(*X)
    ref = ta.attention_backward(state, dO)
    for g, r in zip(ta.attention_backward(state, np.matrix(dO)), ref):
        np.testing.assert_array_equal(g, r)


@pytest.mark.parametrize("name", NAMES)
def test_regression_ragged_operand_names_the_argument(name):
    *X, dO = _inputs()
    ragged = [[1.0, 2.0], [3.0]]
    with pytest.raises(ValueError, match=rf"^{name} is a ragged nested sequence"):
        ta.attention(*_replace(X, name, ragged))
    with pytest.raises(ValueError, match=rf"^{name} is a ragged nested sequence"):
        ta.attention_grad(*_replace(X, name, ragged), dO)


def test_regression_ragged_upstream_gradient_names_the_argument():
    *X, dO = _inputs()
    _, state = ta.attention_forward(*X)
    ragged = [list(row) for row in dO[:-1]] + [[1.0]]
    with pytest.raises(ValueError, match=r"^dO is a ragged nested sequence"):
        ta.attention_backward(state, ragged)


def _masked(x, where=(0, 0)):
    mask = np.zeros(x.shape, dtype=bool)
    mask[where] = True
    return np.ma.masked_array(x, mask=mask)


@pytest.mark.parametrize("name", NAMES)
def test_regression_masked_operand_is_refused(name):
    *X, dO = _inputs()
    Y = _replace(X, name, _masked(X[NAMES.index(name)]))
    pattern = rf"^{name} is a numpy.ma.MaskedArray with 1 masked entries; masks are not supported.*{name}.filled"
    with pytest.raises(ValueError, match=pattern):
        ta.attention(*Y)
    with pytest.raises(ValueError, match=pattern):
        ta.attention_forward(*Y)


def test_regression_masked_upstream_gradient_is_refused():
    *X, dO = _inputs()
    _, state = ta.attention_forward(*X)
    with pytest.raises(ValueError, match=r"^dO is a numpy.ma.MaskedArray .*masks are not supported.*dO.filled"):
        ta.attention_backward(state, _masked(dO))


@pytest.mark.parametrize("name", NAMES + ("dO",))
def test_regression_masked_array_without_masked_entries_is_its_data(name):
    """Documented choice: a MaskedArray with nothing masked is accepted (its data is used)."""
    *X, dO = _inputs()
    ref = ta.attention_grad(*X, dO)
    if name == "dO":
        dO = np.ma.masked_array(dO)
    else:
        X = _replace(X, name, np.ma.masked_array(X[NAMES.index(name)], mask=False))
    for g, r in zip(ta.attention_grad(*X, dO), ref):
        assert type(g) is np.ndarray
        np.testing.assert_array_equal(g, r)


# --- 2. the overflow message ------------------------------------------------------------------


def _overflowing_values(dtype, big):
    *X, _ = _inputs()
    V1 = np.full((M1, DV), big)
    V2 = np.full((M2, DV), big)
    return [x.astype(dtype) for x in (*X[:3], V1, V2)]


def test_regression_float64_overflow_message_does_not_suggest_float64():
    with pytest.raises(ValueError, match="the result O overflows float64") as info:
        ta.attention(*_overflowing_values(np.float64, 1e200))
    assert "float64)" not in str(info.value) and "use float64" not in str(info.value)


def test_regression_float32_overflow_message_suggests_float64():
    with pytest.raises(ValueError, match=r"the result O overflows float32 .*\(or use float64\)"):
        ta.attention(*_overflowing_values(np.float32, 1e30))


# --- 3. the logit-range check -----------------------------------------------------------------


def test_regression_logit_bound_is_computed_without_overflow():
    """Q·K1 ≈ 1e320 overflows, but with K2 ≈ 1e-300 the logits are ≈ 1e20: the check must not
    report "bound inf"; it refuses only because the kernels' product scale·Q∘K1 overflows."""
    ones = np.ones((1, 2))
    with pytest.raises(ValueError, match=r"Q and K1 are too large together.*up to 5e\+319.*bounded by 1e\+20") as info:
        check_logit_range(0.5, ones * 1e160, ones * 1e160, ones * 1e-300)
    assert "inf" not in str(info.value)
    check_logit_range(0.5, ones * 1e10, ones * 1e10, ones)  # the same logits, rebalanced: accepted


@pytest.mark.parametrize(("maxima", "bound"), [
    ((1e200, 1e200, 1e100), "2e+500"),  # beyond float64: printed as a power of ten, not inf
    ((1e100, 1e100, 1e101), "2e+301"),
])
def test_regression_too_large_logits_are_refused_with_their_bound(maxima, bound):
    ones = np.ones((1, 2))
    with pytest.raises(ValueError, match=rf"may overflow float64 \(bound {bound.replace('+', '[+]')}, above"):
        check_logit_range(1.0, *(ones * m for m in maxima))


def test_regression_logit_check_accepts_zero_columns():
    zeros = np.zeros((2, 3))
    check_logit_range(1.0, zeros, zeros, zeros)
    check_logit_range(1.0, np.array([[1e300, 0.0]]), np.array([[0.0, 1e300]]), np.ones((1, 2)))


def test_regression_exact_kernel_on_overflowing_intermediates(impl):
    """The reported input: the exact kernel would form scale·Q∘K1 = inf (NaN output); it is
    refused up front, with finite numbers, before any kernel runs."""
    rng = np.random.default_rng(5)
    Q = rng.uniform(0.5, 1.0, (3, 2)) * 1e160
    K1 = rng.uniform(0.5, 1.0, (4, 2)) * 1e160
    K2 = rng.uniform(0.5, 1.0, (5, 2)) * 1e-300
    V1, V2 = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    Q, K1, K2, V1, V2 = _on(impl, Q, K1, K2, V1, V2)
    with pytest.raises(ValueError, match=r"Q and K1 are too large together.*rebalance") as info:
        ta.attention(Q, K1, K2, V1, V2, **impl)
    assert "inf" not in str(info.value)


def test_regression_exact_kernel_on_rebalanced_large_logits(impl):
    """The same logits (≈1e20) with rebalanced columns are computed: the softmax is one-hot."""
    rng = np.random.default_rng(5)
    Q = rng.uniform(0.5, 1.0, (3, 2)) * 1e10
    K1 = rng.uniform(0.5, 1.0, (4, 2)) * 1e10
    K2 = rng.uniform(0.5, 1.0, (5, 2))
    V1, V2 = rng.standard_normal((4, 2)), rng.standard_normal((5, 2))
    ref, _ = dense_attention(Q, K1, K2, V1, V2)
    out = _host(ta.attention(*_on(impl, Q, K1, K2, V1, V2), **impl))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)


# --- 4. aliasing between the returned output and the backward's state --------------------------


def _on(impl, *arrays):
    if impl["device"] != "cuda":
        return arrays
    from numba import cuda

    return tuple(cuda.to_device(np.ascontiguousarray(a)) for a in arrays)


def _host(x):
    return x if isinstance(x, np.ndarray) else x.copy_to_host()


METHODS = [pytest.param({}, id="exact"), pytest.param({"method": "poly", "tol": 1e-6}, id="poly")]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [(), (2,)])
@pytest.mark.parametrize("options", METHODS)
def test_regression_forward_output_does_not_alias_the_backward_state(options, batch, dtype):
    *X, dO = _inputs(dtype, batch)
    O, state = ta.attention_forward(*X, **options)
    assert state.O is O
    assert not np.shares_memory(O, state._O_impl)
    assert not np.shares_memory(state.lse, state._lse_impl)
    before = ta.attention_backward(state, dO)
    O += 1.0  # a residual add on the output, in place
    state.lse[...] = 0.0
    after = ta.attention_backward(state, dO)
    for name, a, b in zip(ta.AttentionGrads._fields, after, before):
        np.testing.assert_array_equal(a, b, err_msg=name)
    _, fresh = ta.attention_forward(*X, **options)
    np.testing.assert_array_equal(state._O_impl, fresh._O_impl)


def test_regression_device_forward_output_does_not_alias_the_backward_state(impl):
    """GPU inputs (float64): O and state.lse stay on the GPU but are not the backward's arrays."""
    if impl["device"] != "cuda":
        pytest.skip("device arrays only")
    *X, dO = _inputs()
    O, state = ta.attention_forward(*_on(impl, *X), **impl)
    (dO_dev,) = _on(impl, dO)
    assert O is not state._O_impl and state.lse is not state._lse_impl
    before = [_host(g) for g in ta.attention_backward(state, dO_dev)]
    O.copy_to_device(_host(O) + 1.0)
    state.lse.copy_to_device(np.zeros(state.lse.shape))
    after = [_host(g) for g in ta.attention_backward(state, dO_dev)]
    for name, a, b in zip(ta.AttentionGrads._fields, after, before):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, err_msg=name)  # float64 atomics: not bitwise


# --- 1 (adapters). the JAX adapter with the same operands ---------------------------------------


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", ["matrix", "unmasked", "masked", "ragged"])
def test_regression_jax_adapter_numpy_subclasses_and_ragged_lists(kind):
    """float32 (JAX's default): the core's rules hold through tattn_numba.jax; an unmasked
    MaskedArray used to pass the check and then fail inside jnp.asarray without a name."""
    pytest.importorskip("jax", reason="JAX is not installed")
    from tattn_numba.jax import tensor_attention

    *X, _ = _inputs(np.float32)
    K1 = X[1]
    bad = {"matrix": np.matrix(K1), "unmasked": np.ma.masked_array(K1), "masked": _masked(K1),
           "ragged": [[1.0, 2.0], [3.0]]}[kind]
    Y = _replace(X, "K1", bad)
    if kind == "masked":
        with pytest.raises(ValueError, match=r"^K1 is a numpy.ma.MaskedArray .*masks are not supported"):
            tensor_attention(*Y)
    elif kind == "ragged":
        with pytest.raises(ValueError, match=r"^K1 is a ragged nested sequence"):
            tensor_attention(*Y)
    else:
        np.testing.assert_allclose(np.asarray(tensor_attention(*Y)), ta.attention(*X), rtol=1e-6, atol=1e-6)
