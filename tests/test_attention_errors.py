"""Malformed input must raise TypeError / ValueError naming the offending argument; hostile but
well-formed input must never crash or return NaN.

Every public entry point is exercised: ``attention``, ``attention_forward`` and ``attention_grad``
(called with a valid ``dO``), plus ``attention_backward`` for the upstream gradient.
"""

from __future__ import annotations


import numpy as np
import pytest

import tattn_numba as ta
from reference import dense_attention, make_inputs

pytestmark = pytest.mark.usefixtures("warm_kernels")

NAMES = ("Q", "K1", "K2", "V1", "V2")
N, M1, M2, D, DV = 3, 4, 5, 2, 4


def _inputs(dtype=np.float64, batch=(), n=N, m1=M1, m2=M2, seed=0):
    rng = np.random.default_rng(seed)
    return make_inputs(rng, batch, n, m1, m2, D, DV, dtype, with_dO=True)


def _call_attention(X, dO, **kw):
    return ta.attention(*X, **kw)


def _call_forward(X, dO, **kw):
    return ta.attention_forward(*X, **kw)


def _call_grad(X, dO, **kw):
    return ta.attention_grad(*X, dO, **kw)


ENTRY_POINTS = [
    pytest.param(_call_attention, id="attention"),
    pytest.param(_call_forward, id="attention_forward"),
    pytest.param(_call_grad, id="attention_grad"),
]


def _replace(X, which, value):
    Y = list(X)
    Y[NAMES.index(which)] = value
    return Y


def test_valid_baseline_does_not_raise():
    """The arrays used below are valid as they are: each error comes from the one change made."""
    *X, dO = _inputs()
    for call in (_call_attention, _call_forward, _call_grad):
        call(X, dO)
    ta.attention(*_inputs(n=4, m1=4, m2=4)[:5], causal=True)


# ------------------------------------------------------------------------------------- TypeError


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("bad", ["abc", None, object(), 3.5, {"a": 1}], ids=["str", "None", "object", "float", "dict"])
def test_non_array_input(call, which, bad):
    *X, dO = _inputs()
    with pytest.raises(TypeError, match=which):
        call(_replace(X, which, bad), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize(
    "dtype", [np.int64, np.int32, np.float16, np.complex128, np.bool_, np.object_, np.str_],
    ids=["int64", "int32", "float16", "complex128", "bool", "object", "str"],
)
def test_unsupported_dtype(call, which, dtype):
    *X, dO = _inputs()
    k = NAMES.index(which)
    X[k] = X[k].astype(dtype)
    with pytest.raises(TypeError, match=which):
        call(X, dO)


def test_unsupported_dtype_everywhere():
    """All five inputs int (one dtype, but unsupported): TypeError naming the first, Q."""
    *X, dO = _inputs()
    with pytest.raises(TypeError, match="Q"):
        ta.attention(*(np.ones(x.shape, dtype=np.int64) for x in X))
    with pytest.raises(TypeError, match="Q"):
        ta.attention(*(x.astype(np.float16) for x in X))


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES[1:])
@pytest.mark.parametrize("base", [np.float32, np.float64], ids=["f32", "f64"])
def test_mixed_dtypes(call, which, base):
    other = np.float64 if base == np.float32 else np.float32
    *X, dO = _inputs(base)
    X = _replace(X, which, X[NAMES.index(which)].astype(other))
    with pytest.raises(TypeError, match=which):
        call(X, dO)


@pytest.mark.parametrize("base", [np.float32, np.float64], ids=["f32", "f64"])
def test_mixed_dtype_in_query(base):
    """Q float32 and the rest float64 (or the reverse): the message names a conflicting argument."""
    other = np.float64 if base == np.float32 else np.float32
    *X, dO = _inputs(base)
    X[0] = X[0].astype(other)
    with pytest.raises(TypeError, match="K1|Q"):
        ta.attention(*X)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("causal", [1, 0, "yes", None, 1.0, np.array([True])], ids=["1", "0", "str", "None", "1.0", "array"])
def test_non_bool_causal(call, causal):
    *X, dO = _inputs(n=4, m1=4, m2=4)
    with pytest.raises(TypeError, match="causal"):
        call(X, dO, causal=causal)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("scale", ["1", True, False, 1 + 0j, [1.0], np.array([0.5])],
                         ids=["str", "True", "False", "complex", "list", "array"])
def test_non_real_scale(call, scale):
    *X, dO = _inputs()
    with pytest.raises(TypeError, match="scale"):
        call(X, dO, scale=scale)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("method", [None, 1, b"exact", ["exact"]], ids=["None", "int", "bytes", "list"])
def test_non_string_method(call, method):
    *X, dO = _inputs()
    with pytest.raises(TypeError, match="method"):
        call(X, dO, method=method)


@pytest.mark.parametrize("call", ENTRY_POINTS)
def test_unknown_keyword_option(call):
    *X, dO = _inputs()
    with pytest.raises(TypeError, match="foo"):
        call(X, dO, foo=1)
    with pytest.raises(TypeError, match="block_size_xyz"):
        call(X, dO, block_size_xyz=64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_upstream_gradient_wrong_dtype(dtype):
    *X, dO = _inputs(dtype)
    other = np.float64 if dtype == np.float32 else np.float32
    for bad in (dO.astype(other), dO.astype(np.int64), dO.astype(np.complex128), "dO", None):
        _assert_upstream_gradient_rejected(X, bad, TypeError)


def _assert_upstream_gradient_rejected(X, bad, error):
    """Both entry points taking an upstream gradient, ``attention_backward`` (after a forward on
    ``X``) and ``attention_grad``, raise ``error`` naming ``dO`` when it is ``bad``."""
    _, state = ta.attention_forward(*X)
    with pytest.raises(error, match="dO"):
        ta.attention_backward(state, bad)
    with pytest.raises(error, match="dO"):
        ta.attention_grad(*X, bad)


def test_backward_needs_a_forward_state():
    *X, dO = _inputs()
    O, state = ta.attention_forward(*X)
    for bad in (None, O, (O, state.lse), {"O": O}):
        with pytest.raises(TypeError, match="state"):
            ta.attention_backward(bad, dO)


# ------------------------------------------------------------------------------------ ValueError


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("rank", [0, 1])
def test_rank_below_two(call, which, rank):
    *X, dO = _inputs()
    k = NAMES.index(which)
    bad = np.asarray(X[k][0, 0]) if rank == 0 else X[k][0]
    with pytest.raises(ValueError, match=which):
        call(_replace(X, which, bad), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", ["K1", "K2"])
def test_mismatched_feature_dim(call, which):
    *X, dO = _inputs()
    rng = np.random.default_rng(1)
    rows = M1 if which == "K1" else M2
    with pytest.raises(ValueError, match=which):
        call(_replace(X, which, rng.standard_normal((rows, D + 1))), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which,shape,named", [
    pytest.param("Q", (N, D + 2), "Q|K1", id="query-feature-dim-differs-from-both-keys"),
    pytest.param("V2", (M2, DV + 1), "V2|V1", id="value-widths-differ"),
])
def test_width_mismatch_names_an_argument(call, which, shape, named):
    *X, dO = _inputs()
    with pytest.raises(ValueError, match=named):
        call(_replace(X, which, np.ones(shape)), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which,rows", [("V1", M1 + 1), ("V1", M1 - 1), ("V2", M2 + 1), ("V2", 1)])
def test_value_rows_differ_from_key_rows(call, which, rows):
    *X, dO = _inputs()
    with pytest.raises(ValueError, match=which):
        call(_replace(X, which, np.ones((rows, DV))), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", ["K1", "K2", "V1", "V2"])
@pytest.mark.parametrize("kind", ["other-batch", "extra-dim", "missing-dim"])
def test_mismatched_leading_dims(call, which, kind):
    """K1, K2, V1, V2 share their leading dimensions exactly (no broadcasting among them; Q's
    grouping and broadcasting against them is tested in tests/test_forms.py)."""
    *X, dO = _inputs(batch=(2,))
    k = NAMES.index(which)
    if kind == "other-batch":
        bad = np.concatenate([X[k], X[k]], axis=0)  # (4, rows, cols)
    elif kind == "extra-dim":
        bad = X[k][None]  # (1, 2, rows, cols): would broadcast, must not
    else:
        bad = X[k][0]
    match = which if which != "K1" else "K1|K2"  # K1 defines the keys' shape; the others then mismatch it
    with pytest.raises(ValueError, match=match):
        call(_replace(X, which, bad), dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
def test_query_heads_not_a_multiple_of_key_heads(call):
    *X, dO = _inputs(batch=(2,))
    X[0] = np.concatenate([X[0], X[0][:1]], axis=0)  # Q (3, n, d) over K (2, m, d)
    with pytest.raises(ValueError, match=r"Q has 3 query heads .* 2 key/value heads"):
        call(_replace(X, "Q", X[0]), dO)


def test_broadcastable_batch_of_one_is_rejected():
    *X, dO = _inputs(batch=(3,))
    X[1] = X[1][:1]  # K1 (1, m1, d) would broadcast against 3
    with pytest.raises(ValueError, match="K1"):
        ta.attention(*X)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("axis", [-1, -2, 0])
def test_empty_arrays(call, which, axis):
    *X, dO = _inputs(batch=(2,))
    k = NAMES.index(which)
    bad = np.take(X[k], [], axis=axis)
    with pytest.raises(ValueError, match=which):
        call(_replace(X, which, bad), dO)


def test_all_empty_batch():
    X = [np.zeros((0, n, c)) for n, c in ((N, D), (M1, D), (M2, D), (M1, DV), (M2, DV))]
    with pytest.raises(ValueError, match="Q|empty"):
        ta.attention(*X)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("which", NAMES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_non_finite_entries(call, which, value, dtype):
    *X, dO = _inputs(dtype, batch=(2,))
    k = NAMES.index(which)
    X[k] = X[k].copy()
    X[k][1, -1, -1] = value
    with pytest.raises(ValueError, match=which):
        call(X, dO)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_non_finite_upstream_gradient(value, dtype):
    *X, dO = _inputs(dtype)
    dO[0, 1] = value
    _, state = ta.attention_forward(*X)
    with pytest.raises(ValueError, match="dO"):
        ta.attention_backward(state, dO)
    with pytest.raises(ValueError, match="dO"):
        ta.attention_grad(*X, dO)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("lengths", [(3, 4, 4), (4, 3, 4), (4, 4, 3), (2, 3, 4)])
def test_causal_needs_equal_lengths(call, lengths):
    n, m1, m2 = lengths
    *X, dO = _inputs(n=n, m1=m1, m2=m2)
    call(X, dO, causal=False)  # fine without the mask
    with pytest.raises(ValueError, match="causal"):
        call(X, dO, causal=True)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("scale", [0.0, -0.0, -1.0, -1e-300, np.nan, np.inf, -np.inf, np.float32(-2.0)],
                         ids=["0", "-0", "-1", "-tiny", "nan", "inf", "-inf", "f32neg"])
def test_bad_scale_value(call, scale):
    *X, dO = _inputs()
    with pytest.raises(ValueError, match="scale"):
        call(X, dO, scale=scale)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("method", ["fast", "", "EXACT", "exact "])
def test_unknown_method(call, method):
    *X, dO = _inputs()
    with pytest.raises(ValueError, match="method"):
        call(X, dO, method=method)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("device", ["tpu", "", "CPU", "gpu"])
def test_unknown_device(call, device):
    *X, dO = _inputs()
    with pytest.raises(ValueError, match="device"):
        call(X, dO, device=device)


@pytest.mark.parametrize("call", ENTRY_POINTS)
@pytest.mark.parametrize("device", [None, 0, ["cpu"]], ids=["None", "int", "list"])
def test_non_string_device(call, device):
    *X, dO = _inputs()
    with pytest.raises((TypeError, ValueError), match="device"):
        call(X, dO, device=device)


@pytest.mark.parametrize("call", ENTRY_POINTS)
def test_cuda_without_gpu_is_a_clear_error(call, monkeypatch):
    """Wherever this runs (GPU, simulator, neither), a CUDA request without a usable GPU raises
    CUDAUnavailableError naming what is missing; tests/test_cuda_device.py covers the rest."""
    from tattn_numba import _cuda

    monkeypatch.setattr(_cuda, "require", _raise_unavailable)
    *X, dO = _inputs()
    with pytest.raises(ta.CUDAUnavailableError, match="GPU"):
        call(X, dO, device="cuda")


def _raise_unavailable():
    raise ta.CUDAUnavailableError("device='cuda' needs an NVIDIA GPU (test double)")


@pytest.mark.parametrize("shape", [(N, DV + 1), (N + 1, DV), (1, N, DV), (N,), (DV, N)])
def test_upstream_gradient_wrong_shape(shape):
    *X, _ = _inputs()
    _assert_upstream_gradient_rejected(X, np.ones(shape), ValueError)


def test_upstream_gradient_empty():
    *X, dO = _inputs()
    _, state = ta.attention_forward(*X)
    with pytest.raises(ValueError, match="dO"):
        ta.attention_backward(state, np.ones((0, DV)))


def test_upstream_gradient_batch_mismatch():
    *X, dO = _inputs(batch=(2,))
    _, state = ta.attention_forward(*X)
    with pytest.raises(ValueError, match="dO"):
        ta.attention_backward(state, dO[:1])
    with pytest.raises(ValueError, match="dO"):
        ta.attention_backward(state, dO[0])


# --------------------------------------------------------------------------- hostile but finite
#
# Decision for finite inputs whose logits overflow float64 (entries ~1e300): the call must either
# return a finite result or raise a ValueError that says what is wrong. Never NaN, never a crash
# (segfault, ZeroDivisionError, FloatingPointError, ...). Where the result is finite and the logits
# are representable, it must also match the reference.
#
# For value products V1∘V2 that overflow the output dtype, the true O is not representable; there
# we only require: no NaN (±inf is the correctly-rounded answer), or a ValueError.


def _finite_or_value_error(fn):
    try:
        out = fn()
    except ValueError as exc:
        assert str(exc), "ValueError without a message"
        return None
    arrays = out if isinstance(out, tuple) else (out,)
    for a in arrays:
        if isinstance(a, np.ndarray):
            assert not np.isnan(a).any(), "NaN in the result"
            assert np.isfinite(a).all(), "non-finite result for finite inputs"
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("big", [1e300, -1e300, 1e150], ids=["1e300", "-1e300", "1e150"])
def test_overflowing_logits_float64(impl, big, causal):
    """Entries 1e300: Q·K1 overflows to inf. Entries 1e150: logits ~±1e300, still finite."""
    rng = np.random.default_rng(2)
    n = 4
    Q = rng.uniform(0.5, 1.0, (n, 2)) * np.array([big, -big])
    K1 = rng.uniform(0.5, 1.0, (n, 2)) * big
    K2 = rng.uniform(0.5, 1.0, (n, 2))
    V1 = rng.standard_normal((n, 2))
    V2 = rng.standard_normal((n, 2))
    dO = rng.standard_normal((n, 2))
    out = _finite_or_value_error(lambda: ta.attention(Q, K1, K2, V1, V2, scale=1.0, causal=causal, **impl))
    if out is not None and abs(big) < 1e200:
        ref, _ = dense_attention(Q, K1, K2, V1, V2, scale=1.0, causal=causal)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    _finite_or_value_error(
        lambda: tuple(ta.attention_grad(Q, K1, K2, V1, V2, dO, scale=1.0, causal=causal, **impl))
    )


def test_logit_sum_overflows(impl):
    """Every product Q·K1·K2 is finite (1e308) but their sum over d = 2 features is not."""
    c = 1e308 ** (1.0 / 3.0)
    Q = np.array([[c, c], [1.0, -1.0]])
    K1 = np.array([[c, c], [1.0, 0.5]])
    K2 = np.array([[c, c], [-1.0, 2.0], [0.5, 0.5]])
    V1 = np.array([[1.0, 2.0], [3.0, -1.0]])
    V2 = np.array([[0.5, 1.0], [2.0, 2.0], [-1.0, 4.0]])
    dO = np.ones((2, 2))
    _finite_or_value_error(lambda: ta.attention(Q, K1, K2, V1, V2, scale=1.0, **impl))
    _finite_or_value_error(lambda: tuple(ta.attention_grad(Q, K1, K2, V1, V2, dO, scale=1.0, **impl)))


def test_logits_at_the_edge_of_float64(impl):
    """Logits ±1.5e308 are representable, but max - min = -inf (exp of it must be 0, not NaN)."""
    Q = np.array([[1.5e308], [-1.5e308]])
    K1 = np.array([[1.0], [-1.0]])
    K2 = np.array([[1.0], [0.5], [-1.0]])
    V1 = np.array([[1.0, 2.0], [3.0, -1.0]])
    V2 = np.array([[0.5, 1.0], [2.0, 2.0], [-1.0, 4.0]])
    out = _finite_or_value_error(lambda: ta.attention(Q, K1, K2, V1, V2, scale=1.0, **impl))
    if out is not None:
        # row 0: the maximum 1.5e308 is attained at (0, 0) and (1, 2): O averages those two products;
        # row 1: at (0, 2) and (1, 0).
        np.testing.assert_allclose(out[0], (V1[0] * V2[0] + V1[1] * V2[2]) / 2, rtol=1e-14)
        np.testing.assert_allclose(out[1], (V1[0] * V2[2] + V1[1] * V2[0]) / 2, rtol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
def test_float32_near_overflow_keys(impl, causal):
    """float32 entries near 3e38: logits ~1e115 are fine in the promised float64 internals, so O
    must be finite and correct. The gradients dQ = s·Σ dZ·K1·K2 etc. carry factors ~1e77 and may
    legitimately be beyond float32 (±inf), but never NaN."""
    rng = np.random.default_rng(3)
    n = 4
    sign = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0)
    Q = (rng.uniform(0.5, 1.0, (n, 2)) * 3e38 * sign).astype(np.float32)
    K1 = (rng.uniform(0.5, 1.0, (n, 2)) * 3e38).astype(np.float32)
    K2 = (rng.uniform(0.5, 1.0, (n, 2)) * 3e38).astype(np.float32)
    V1 = rng.standard_normal((n, 3)).astype(np.float32)
    V2 = rng.standard_normal((n, 3)).astype(np.float32)
    dO = rng.standard_normal((n, 3)).astype(np.float32)
    out = _finite_or_value_error(lambda: ta.attention(Q, K1, K2, V1, V2, causal=causal, **impl))
    if out is not None:
        ref, _ = dense_attention(Q, K1, K2, V1, V2, causal=causal)
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    with np.errstate(over="ignore"):
        try:
            grads = ta.attention_grad(Q, K1, K2, V1, V2, dO, causal=causal, **impl)
        except ValueError as exc:
            assert str(exc)
            return
    for name, g in zip(grads._fields, grads):
        assert g.dtype == np.float32 and not np.isnan(g).any(), name


@pytest.mark.parametrize(
    "dtype,big", [(np.float32, 1e30), (np.float64, 1e200)], ids=["f32", "f64"]
)
def test_value_products_overflow_never_nan(impl, dtype, big):
    """V1∘V2 beyond the dtype's range: O is ±inf or a ValueError is raised, never NaN."""
    rng = np.random.default_rng(4)
    n = 3
    Q, K1, K2 = (rng.standard_normal((n, 2)).astype(dtype) for _ in range(3))
    V1 = (big * rng.uniform(0.5, 1.0, (n, 2))).astype(dtype)
    V2 = (big * rng.uniform(0.5, 1.0, (n, 2)) * np.array([1.0, -1.0])).astype(dtype)
    try:
        with np.errstate(over="ignore"):
            out = ta.attention(Q, K1, K2, V1, V2, **impl)
    except ValueError as exc:
        assert str(exc)
        return
    assert not np.isnan(out).any()
    assert np.all(out[:, 0] > 0) and np.all(out[:, 1] < 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_subnormal_and_tiny_entries(impl, dtype):
    """Denormal / tiny entries: logits underflow to 0, P uniform; nothing breaks."""
    tiny = np.finfo(dtype).smallest_subnormal
    rng = np.random.default_rng(5)
    Q = np.full((3, 2), tiny, dtype)
    K1 = np.full((4, 2), tiny, dtype)
    K2 = rng.standard_normal((5, 2)).astype(dtype)
    V1 = rng.standard_normal((4, 3)).astype(dtype)
    V2 = np.full((5, 3), tiny, dtype)
    O = ta.attention(Q, K1, K2, V1, V2, **impl)
    assert np.isfinite(O).all()
    expect = V1.astype(float).mean(0) * V2.astype(float).mean(0)
    np.testing.assert_allclose(O, np.broadcast_to(expect, O.shape), atol=64 * float(tiny))
