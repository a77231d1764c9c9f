"""tattn_numba.torch: the autograd Function, the functional wrapper and the nn.Module layer.

Forward and gradients against the core API, gradcheck in float64, the surrogate's gradients
within their certified bounds, dtypes, errors passed through from the core, non-CPU refusal,
and the lazy import of torch.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'tattn-numba[torch]')")

import tattn_numba as ta  # noqa: E402
from tattn_numba.torch import TensorAttention, TensorAttentionFunction, tensor_attention  # noqa: E402

SHAPES = {"Q": (5, 3), "K1": (4, 3), "K2": (6, 3), "V1": (4, 2), "V2": (6, 2)}


def make_inputs(batch=(), causal=False, dtype=torch.float64, seed=0, scale=1.0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    shapes = {k: (5, v[1]) for k, v in SHAPES.items()} if causal else SHAPES
    return [
        (scale * torch.randn(*batch, *shape, generator=g, dtype=dtype)).requires_grad_(requires_grad)
        for shape in shapes.values()
    ]


def numpy_of(tensors):
    return [t.detach().numpy().copy() for t in tensors]


def grads_of(out, inputs, dO):
    return torch.autograd.grad(out, inputs, dO)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_forward_and_gradients_equal_core(batch, causal):
    xs = make_inputs(batch, causal)
    O = tensor_attention(*xs, causal=causal, scale=0.7)
    ref = ta.attention(*numpy_of(xs), causal=causal, scale=0.7)
    assert O.dtype == torch.float64 and O.shape == ref.shape
    np.testing.assert_allclose(O.detach().numpy(), ref, rtol=1e-13, atol=1e-15)
    dO = torch.randn(O.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = grads_of(O, xs, dO)
    refs = ta.attention_grad(*numpy_of(xs), dO.numpy(), causal=causal, scale=0.7)
    for name, g, r in zip(ta.AttentionGrads._fields, grads, refs):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-13, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_exact_float64(causal):
    xs = make_inputs((2,), causal)
    assert torch.autograd.gradcheck(lambda *a: tensor_attention(*a, causal=causal), xs)


def test_float32_in_float32_out():
    xs = make_inputs((2,), dtype=torch.float32)
    O = tensor_attention(*xs)
    assert O.dtype == torch.float32
    O.sum().backward()
    assert all(x.grad is not None and x.grad.dtype == torch.float32 for x in xs)
    np.testing.assert_allclose(O.detach().numpy(), ta.attention(*numpy_of(xs)), rtol=1e-6)


def test_only_some_inputs_require_grad_and_no_grad_mode():
    xs = make_inputs(requires_grad=False)
    xs[0].requires_grad_()
    tensor_attention(*xs).sum().backward()
    assert xs[0].grad is not None and all(x.grad is None for x in xs[1:])
    with torch.no_grad():
        O = tensor_attention(*xs)
    assert not O.requires_grad
    np.testing.assert_allclose(O.numpy(), ta.attention(*numpy_of(xs)), rtol=1e-13, atol=1e-15)


def test_function_apply_directly():
    xs = make_inputs()
    O = TensorAttentionFunction.apply(*xs, None, False, "exact", {})
    np.testing.assert_allclose(O.detach().numpy(), ta.attention(*numpy_of(xs)), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("degree", [2, 5])
def test_poly_gradients_within_certified_bounds(degree, causal):
    xs = make_inputs((2,), causal, scale=0.5, seed=degree)
    arrays = numpy_of(xs)
    O = tensor_attention(*xs, causal=causal, method="poly", degree=degree)
    O_ref, state = ta.attention_forward(*arrays, causal=causal, method="poly", degree=degree)
    np.testing.assert_allclose(O.detach().numpy(), O_ref, rtol=1e-13, atol=1e-15)
    dO = torch.randn(O.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = grads_of(O, xs, dO)
    exact = ta.attention_grad(*arrays, dO.numpy(), causal=causal)
    bounds = ta.poly_gradient_bounds(state, dO.numpy())
    for name, g, r, b in zip(ta.AttentionGrads._fields, grads, exact, bounds):
        floor = 1e-12 * max(float(np.abs(r).max()), 1.0)
        assert np.all(np.abs(g.numpy() - r) <= b + floor), name


def test_module_forward_backward():
    torch.manual_seed(0)
    layer = TensorAttention(12, num_heads=3, causal=True, bias=True)
    assert layer.head_dim == 4
    x = torch.randn(2, 7, 12, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    y.square().sum().backward()
    assert x.grad is not None
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_module_matches_manual_heads_and_poly_option():
    torch.manual_seed(1)
    layer = TensorAttention(8, num_heads=2, head_dim=3, method="poly", degree=6).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64) * 0.3
    y = layer(x)
    heads = [W(x).view(2, 5, 2, 3).transpose(1, 2) for W in
             (layer.W_Q, layer.W_K1, layer.W_K2, layer.W_V1, layer.W_V2)]
    o = ta.attention(*(h.detach().numpy() for h in heads), method="poly", degree=6)
    expected = layer.W_O(torch.from_numpy(o).transpose(1, 2).reshape(2, 5, 6))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_module_bad_configuration():
    with pytest.raises(ValueError, match="num_heads"):
        TensorAttention(10, num_heads=3)
    with pytest.raises(ValueError, match="embed_dim"):
        TensorAttention(8, 2)(torch.randn(2, 5, 6))


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda xs: xs.__setitem__(1, xs[1][..., :2]), ValueError, "K1 must have shape"),
        (lambda xs: xs.__setitem__(0, xs[0].float()), TypeError, "K1 has dtype float64"),
        (lambda xs: xs.__setitem__(2, xs[2].to(torch.int64)), TypeError, "K2 must have dtype float32 or float64"),
        (lambda xs: xs.__setitem__(3, xs[3].bfloat16()), TypeError, "V1 must have dtype float32 or float64"),
        (lambda xs: xs.__setitem__(4, xs[4].detach() * float("nan")), ValueError, "V2 contains NaN"),
        (lambda xs: xs.__setitem__(0, "not an array"), TypeError, "Q must be an array"),
        (lambda xs: xs.__setitem__(0, xs[0].detach()[0]), ValueError, "Q must have at least 2 dimensions"),
    ],
)
def test_bad_input_raises_core_errors(mutate, exc, match):
    xs = make_inputs()
    mutate(xs)
    with pytest.raises(exc, match=match):
        tensor_attention(*xs)


def test_bad_options_raise_core_errors():
    xs = make_inputs()
    with pytest.raises(TypeError, match="unknown option"):
        tensor_attention(*xs, degree=3)
    with pytest.raises(ValueError, match="unknown method"):
        tensor_attention(*xs, method="fast")
    with pytest.raises(TypeError, match="causal must be a bool"):
        tensor_attention(*xs, causal=1)
    with pytest.raises(ValueError, match="scale must be positive"):
        tensor_attention(*xs, scale=-1.0)
    with pytest.raises(ValueError, match="causal=True needs"):
        tensor_attention(*xs, causal=True)


def test_in_place_modification_before_backward_is_refused():
    xs = make_inputs()
    O = tensor_attention(*xs)
    with torch.no_grad():
        xs[1].add_(1.0)
    with pytest.raises(ValueError, match="K1 was modified"):
        O.sum().backward()


@pytest.mark.parametrize("options", [pytest.param({}, id="exact"),
                                     pytest.param({"method": "poly", "tol": 1e-6}, id="poly")])
@pytest.mark.parametrize("loss", ["sum", "square"])
def test_regression_in_place_add_on_output_gives_out_of_place_gradients(options, loss):
    """Regression: ``O += r`` on the output changed the gradients silently (0.47 exact, 2.4 poly):
    the returned tensor was the memory the backward read as O. It must equal ``O = O + r``."""
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(2, 8, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    r = torch.randn(2, 8, 4, generator=g, dtype=torch.float64)

    def grads(in_place):
        xs = [b.clone().requires_grad_() for b in base]
        O = tensor_attention(*xs, **options)
        if in_place:
            O += r
        else:
            O = O + r
        (O.sum() if loss == "sum" else (O * O).sum()).backward()
        return O.detach(), [x.grad for x in xs]

    O_in, g_in = grads(True)
    O_out, g_out = grads(False)
    torch.testing.assert_close(O_in, O_out, rtol=0, atol=0)
    for name, a, b in zip(ta.AttentionGrads._fields, g_in, g_out):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_non_cpu_tensor_refused_naming_device():
    xs = make_inputs()
    xs[2] = torch.empty(6, 3, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match=r"K2 .*device=meta.*CPU tensors only"):
        tensor_attention(*xs)


def test_cuda_tensor_refused(monkeypatch):
    xs = make_inputs()
    if torch.cuda.is_available():
        xs[0] = xs[0].detach().cuda()
    else:  # fake it: the adapter decides from tensor.device
        monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(ValueError, match=r"Q is a CUDA tensor \(device=cuda:0\).*CPU tensors only.*device='cuda'"):
        tensor_attention(*xs)


def test_import_tattn_numba_does_not_import_frameworks():
    code = "import sys, tattn_numba; print(sorted({'torch', 'jax'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
