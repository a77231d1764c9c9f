"""tattn_numba.jax: the custom_vjp / pure_callback wrapper.

Forward and gradients against the core API (eager, under jit, under vmap), check_grads in
float64, float32, the surrogate's gradients within their certified bounds, errors passed
through from the core, and the lazy import of jax.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install 'tattn-numba[jax]')")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import tattn_numba as ta  # noqa: E402
from tattn_numba.jax import tensor_attention  # noqa: E402


@pytest.fixture(autouse=True)
def x64():
    """float64 for these tests, restored afterwards."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def make_inputs(batch=(), causal=False, dtype=np.float64, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    n = 5
    m1, m2 = (n, n) if causal else (4, 6)
    shapes = [(n, 3), (m1, 3), (m2, 3), (m1, 2), (m2, 2)]
    return [(scale * rng.standard_normal(batch + s)).astype(dtype) for s in shapes]


def all_grads(f, xs, dO):
    _, vjp = jax.vjp(f, *xs)
    return vjp(jnp.asarray(dO))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_forward_and_gradients_equal_core(batch, causal, jit):
    xs = make_inputs(batch, causal)

    def f(*a):
        return tensor_attention(*a, causal=causal, scale=0.7)

    f = jax.jit(f) if jit else f
    O = f(*xs)
    ref = ta.attention(*xs, causal=causal, scale=0.7)
    assert O.dtype == jnp.float64 and O.shape == ref.shape
    np.testing.assert_allclose(np.asarray(O), ref, rtol=1e-13, atol=1e-15)
    dO = np.random.default_rng(1).standard_normal(ref.shape)
    grads = all_grads(f, xs, dO)
    refs = ta.attention_grad(*xs, dO, causal=causal, scale=0.7)
    for name, g, r in zip(ta.AttentionGrads._fields, grads, refs):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-13, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_check_grads_exact_float64(causal):
    xs = [jnp.asarray(x) for x in make_inputs((2,), causal)]
    check_grads(lambda *a: tensor_attention(*a, causal=causal), xs, order=1, modes=["rev"])


def test_grad_under_jit_and_vmap():
    xs = make_inputs((2,))
    loss = jax.jit(jax.grad(lambda *a: jnp.sum(tensor_attention(*a) ** 2), argnums=(0, 1, 2, 3, 4)))
    grads = loss(*xs)
    O = ta.attention(*xs)
    refs = ta.attention_grad(*xs, 2 * O)
    for g, r in zip(grads, refs):
        np.testing.assert_allclose(np.asarray(g), r, rtol=1e-12, atol=1e-14)
    stacked = [np.stack([x, 2 * x]) for x in xs]
    Ov = jax.vmap(tensor_attention)(*stacked)
    np.testing.assert_allclose(np.asarray(Ov), ta.attention(*stacked), rtol=1e-13, atol=1e-15)


def test_float32():
    xs = make_inputs((2,), dtype=np.float32)
    O = jax.jit(tensor_attention)(*xs)
    assert O.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(O), ta.attention(*xs), rtol=1e-13, atol=1e-15)
    g = jax.grad(lambda q: tensor_attention(q, *xs[1:]).sum())(jnp.asarray(xs[0]))
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), ta.attention_grad(*xs, np.ones_like(O)).dQ, rtol=1e-6)


def test_float32_without_x64():
    jax.config.update("jax_enable_x64", False)
    xs = [jnp.asarray(x) for x in make_inputs(dtype=np.float32)]
    assert tensor_attention(*xs).dtype == jnp.float32
    assert jax.grad(lambda q: tensor_attention(q, *xs[1:]).sum())(xs[0]).dtype == jnp.float32


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("degree", [2, 5])
def test_poly_gradients_within_certified_bounds(degree, causal):
    xs = make_inputs((2,), causal, scale=0.5, seed=degree)

    def f(*a):
        return tensor_attention(*a, causal=causal, method="poly", degree=degree)

    O_ref, state = ta.attention_forward(*xs, causal=causal, method="poly", degree=degree)
    np.testing.assert_allclose(np.asarray(jax.jit(f)(*xs)), O_ref, rtol=1e-13, atol=1e-15)
    dO = np.random.default_rng(3).standard_normal(O_ref.shape)
    grads = all_grads(jax.jit(f), xs, dO)
    exact = ta.attention_grad(*xs, dO, causal=causal)
    bounds = ta.poly_gradient_bounds(state, dO)
    for name, g, r, b in zip(ta.AttentionGrads._fields, grads, exact, bounds):
        floor = 1e-12 * max(float(np.abs(r).max()), 1.0)
        assert np.all(np.abs(np.asarray(g) - r) <= b + floor), name


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "index, bad, exc, match",
    [
        (1, lambda x: x[..., :2], ValueError, "K1 must have shape"),
        (1, lambda x: x.astype(np.float32), TypeError, "K1 has dtype float32"),
        (2, lambda x: x.astype(np.int32), TypeError, "K2 must have dtype float32 or float64"),
        (0, lambda x: x[0], ValueError, "Q must have at least 2 dimensions"),
        (4, lambda x: x[..., :1, :], ValueError, "V2 must have shape"),
    ],
)
def test_bad_input_raises_core_errors(index, bad, exc, match, jit):
    xs = [jnp.asarray(x) for x in make_inputs()]
    xs[index] = bad(xs[index])
    f = jax.jit(tensor_attention) if jit else tensor_attention
    with pytest.raises(exc, match=match):
        f(*xs)


def test_bad_values_and_options_raise_core_errors():
    xs = make_inputs()
    with pytest.raises(TypeError, match="Q must be an array"):
        tensor_attention("Q", *xs[1:])
    with pytest.raises(ValueError, match="V1 contains NaN"):
        tensor_attention(*xs[:3], np.full_like(xs[3], np.nan), xs[4])
    with pytest.raises(TypeError, match="unknown option"):
        tensor_attention(*xs, degree=3)
    with pytest.raises(ValueError, match="unknown method"):
        jax.jit(lambda *a: tensor_attention(*a, method="fast"))(*xs)
    with pytest.raises(TypeError, match="causal must be a bool"):
        tensor_attention(*xs, causal=1)
    with pytest.raises(ValueError, match="scale must be positive"):
        tensor_attention(*xs, scale=-1.0)
    with pytest.raises(ValueError, match="causal=True needs"):
        jax.jit(lambda *a: tensor_attention(*a, causal=True))(*xs)


def test_import_tattn_numba_does_not_import_frameworks():
    code = "import sys, tattn_numba; print(sorted({'torch', 'jax', 'jaxlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
