"""The attention forms through the adapters: PyTorch gradcheck and JAX check_grads in float64
for every combination of grouped heads, sliding windows and determinant logits, the
TensorAttention layer's kv_heads/window/logits options, and their bad-input errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tattn_numba as ta

HEADS = [((2,), (2,)), ((4,), (2,)), ((2, 2), (1, 1))]  # (Q leading dims, key/value leading dims)
WINDOWS = [None, (1, 3), (2, 2)]
LOGITS = ["trilinear", "determinant"]
COMBINATIONS = list(itertools.product(HEADS, WINDOWS, LOGITS))


def _operands(heads, n=4, d=4, dv=2, seed=0):
    lead_q, lead_k = heads
    rng = np.random.default_rng(seed)
    shapes = [lead_q + (n, d), lead_k + (n, d), lead_k + (n, d), lead_k + (n, dv), lead_k + (n, dv)]
    return [0.8 * rng.standard_normal(s) for s in shapes]


def _ids(combination):
    heads, window, logits = combination
    return f"{heads[0]}over{heads[1]}-w{window}-{logits}"


@pytest.mark.parametrize("combination", COMBINATIONS, ids=[_ids(c) for c in COMBINATIONS])
def test_torch_gradcheck_every_combination(combination):
    torch = pytest.importorskip("torch")
    from tattn_numba.torch import tensor_attention

    heads, window, logits = combination
    xs = [torch.tensor(x, requires_grad=True) for x in _operands(heads)]
    assert torch.autograd.gradcheck(lambda *a: tensor_attention(*a, window=window, logits=logits), xs)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=[_ids(c) for c in COMBINATIONS])
def test_jax_check_grads_every_combination(combination):
    jax = pytest.importorskip("jax")
    from jax.test_util import check_grads

    from tattn_numba.jax import tensor_attention

    heads, window, logits = combination
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        xs = [jax.numpy.asarray(x) for x in _operands(heads)]
        f = lambda *a: tensor_attention(*a, window=window, logits=logits)  # noqa: E731
        out = f(*xs)
        np.testing.assert_allclose(np.asarray(out), ta.attention(*_operands(heads), window=window, logits=logits),
                                   rtol=1e-13, atol=1e-15)
        check_grads(f, xs, order=1, modes=("rev",), eps=1e-4, atol=1e-6, rtol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", before)


def test_torch_layer_grouped_windowed_determinant():
    torch = pytest.importorskip("torch")
    from tattn_numba.torch import TensorAttention

    torch.manual_seed(0)
    layer = TensorAttention(12, num_heads=4, head_dim=3, kv_heads=2, window=(3, 2), logits="determinant").double()
    assert layer.W_Q.weight.shape == (12, 12) and layer.W_K1.weight.shape == (6, 12)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    q, k1, k2, v1, v2 = layer.operands(x)
    assert q.shape == (2, 4, 5, 3) and k1.shape == (2, 2, 5, 3)
    expected = ta.attention(*(t.detach().numpy() for t in (q, k1, k2, v1, v2)), window=(3, 2), logits="determinant")
    merged = torch.from_numpy(expected).transpose(1, 2).reshape(2, 5, 12)
    torch.testing.assert_close(y, layer.W_O(merged), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert layer.W_K1.weight.grad.shape == (6, 12) and torch.isfinite(x.grad).all()
    assert "kv_heads=2" in repr(layer) and "causal window (3, 2)" in repr(layer)


@pytest.mark.parametrize("kwargs,match", [
    ({"kv_heads": 3}, "kv_heads"), ({"kv_heads": 0}, "kv_heads"), ({"kv_heads": True}, "kv_heads"),
    ({"window": (0, 2)}, "window"), ({"window": 3}, "window"), ({"logits": "det"}, "logits"),
])
def test_torch_layer_bad_options_are_named(kwargs, match):
    pytest.importorskip("torch")
    from tattn_numba.torch import TensorAttention

    with pytest.raises((TypeError, ValueError), match=match):
        TensorAttention(8, num_heads=4, **kwargs)
