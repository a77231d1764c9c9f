"""The three new forms (grouped heads, sliding windows, determinant logits) on ``device="cuda"``.

Same spec and same independent dense float64 reference as tests/test_forms.py (imported from
there), on tiny shapes: under numba-cuda's simulator (conftest.py turns it on when there is no
NVIDIA device node) every GPU thread is a Python thread, about a second per kernel launch set.
Skipped when numba-cuda is missing, or when there is neither a GPU nor the simulator.
"""

from __future__ import annotations

import numpy as np
import pytest

import tattn_numba as ta
from tattn_numba import _cuda

pytest.importorskip("numba_cuda")

try:
    _cuda.require()
except _cuda.CUDAUnavailableError as exc:  # pragma: no cover - only with NUMBA_ENABLE_CUDASIM=0 and no GPU
    pytest.skip(f"CUDA unusable here: {exc}", allow_module_level=True)

from test_forms import (  # noqa: E402  (after the skip, like tests/test_cuda_device.py)
    NAMES,
    _ref_kwargs,
    assert_matches,
    form_kwargs,
    make_inputs,
    method_kwargs,
    ref_attention,
    ref_attention_grad,
    rotate_chunks,
    random_rotation,
)

CUDA = {"device": "cuda"}


def forward_backward(X, kw, method, dtype):
    """attention_forward + attention_backward on the GPU, every result against the reference."""
    mk = method_kwargs(method, "cuda")
    O, state = ta.attention_forward(*X[:5], **kw, **mk)
    grads = ta.attention_backward(state, X[5])
    rkw = _ref_kwargs(kw)
    ref, lse = ref_attention(*X[:5], **rkw)
    naive = ref_attention(*X[:5], **rkw, dtype=np.float32)[0] if dtype == np.float32 else None
    assert_matches(np.asarray(O), ref, naive, method, dtype, "O")
    if method == "exact":
        tol = 1e-10 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(np.asarray(state.lse), lse, rtol=tol, atol=tol, err_msg="lse")
    refs = ref_attention_grad(*X, **rkw)
    naives = ref_attention_grad(*X, **rkw, dtype=np.float32) if dtype == np.float32 else [None] * 5
    for name, g, r, nv, x in zip(NAMES, grads, refs, naives, X[:5]):
        assert np.shape(g) == np.shape(x), f"{name}: {np.shape(g)} != operand shape {np.shape(x)}"
        assert_matches(np.asarray(g), r, nv, method, dtype, name)
    return O, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_harness_accepts_todays_cuda_kernels(dtype):
    """The comparisons below hold for today's features on the GPU (H == Hk, trilinear, causal)."""
    rng = np.random.default_rng(70)
    X = make_inputs(rng, (1, 2), (1, 2), 4, 4, 4, 4, 2, "exact", dtype)
    forward_backward(X, form_kwargs(causal=True), "exact", dtype)


@pytest.mark.parametrize("case", [
    # (qlead, klead, n, m1, m2, d, dv, kw, dtype)
    ((2, 4), (1, 2), 3, 3, 2, 3, 2, {}, np.float64),                                      # GQA + broadcast
    ((3,), (3,), 4, 4, 4, 3, 2, {"window": (2, 3)}, np.float64),                          # window
    ((1, 2), (1, 2), 4, 4, 4, 3, 1, {"window": (1, 5), "causal": True}, np.float64),      # w1 = 1, w2 > n
    ((2,), (2,), 3, 4, 2, 4, 2, {"logits": "determinant"}, np.float64),                   # det + tail
    ((1, 4), (1, 1), 4, 4, 4, 5, 2, {"window": (3, 2), "logits": "determinant"}, np.float32),  # all, MQA
], ids=["gqa-broadcast", "window", "window-1-wide", "det-d4", "all-three-f32"])
def test_forms_on_cuda_match_reference(case):
    qlead, klead, n, m1, m2, d, dv, kw, dtype = case
    rng = np.random.default_rng(len(qlead) + 10 * n + 100 * d)
    X = make_inputs(rng, qlead, klead, n, m1, m2, d, dv, "exact", dtype)
    forward_backward(X, kw, "exact", dtype)


def test_all_three_on_cuda_equal_cpu_and_attention_grad():
    rng = np.random.default_rng(71)
    X = make_inputs(rng, (2, 4), (1, 2), 4, 4, 4, 4, 2, "exact")
    kw = form_kwargs(window=(2, 3), logits="determinant", scale=0.8)
    O_gpu, g_gpu = forward_backward(X, kw, "exact", np.float64)
    O_cpu = ta.attention(*X[:5], **kw)
    np.testing.assert_allclose(O_gpu, O_cpu, rtol=1e-12, atol=1e-13)
    g_grad = ta.attention_grad(*X, **kw, **CUDA)
    for name, a, b, c in zip(NAMES, g_gpu, g_grad, ta.attention_grad(*X, **kw)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15, err_msg=f"{name}: backward vs attention_grad")
        np.testing.assert_allclose(a, c, rtol=1e-11, atol=1e-13, err_msg=f"{name}: cuda vs cpu")


def test_determinant_rotation_invariance_on_cuda():
    rng = np.random.default_rng(72)
    R = random_rotation(rng)
    X = make_inputs(rng, (1,), (1,), 3, 3, 3, 4, 2, "exact")
    Y = [rotate_chunks(x, R) for x in X[:3]] + list(X[3:])
    O, st = ta.attention_forward(*X[:5], logits="determinant", **CUDA)
    O_rot, st_rot = ta.attention_forward(*Y[:5], logits="determinant", **CUDA)
    np.testing.assert_allclose(O_rot, O, rtol=1e-11, atol=1e-12)
    g, g_rot = ta.attention_backward(st, X[5]), ta.attention_backward(st_rot, X[5])
    for k in range(3):
        np.testing.assert_allclose(g_rot[k], rotate_chunks(g[k], R), rtol=1e-10, atol=1e-12, err_msg=NAMES[k])


def test_gqa_device_arrays_stay_on_device_with_key_shapes():
    """GPU inputs: results stay on the GPU; dK1.. have the key/value arrays' own shapes."""
    rng = np.random.default_rng(73)
    host = make_inputs(rng, (1, 4), (1, 2), 3, 3, 3, 3, 2, "exact")
    dev = [_cuda.cuda().to_device(x) for x in host]
    kw = form_kwargs(window=(2, 2), logits="determinant")
    O, state = ta.attention_forward(*dev[:5], **kw, **CUDA)
    grads = ta.attention_backward(state, dev[5])
    assert not isinstance(O, np.ndarray) and tuple(O.shape) == (1, 4, 3, 2)
    rkw = _ref_kwargs(kw)
    np.testing.assert_allclose(O.copy_to_host(), ref_attention(*host[:5], **rkw)[0], rtol=1e-10, atol=1e-12)
    for name, g, x, r in zip(NAMES, grads, host, ref_attention_grad(*host, **rkw)):
        assert not isinstance(g, np.ndarray), name
        assert tuple(g.shape) == x.shape, name
        np.testing.assert_allclose(g.copy_to_host(), r, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_poly_grouped_determinant_on_cuda(causal):
    """Grouped heads share the key summaries (full mask) or scan the shared keys once per query
    head and sum the key gradients (causal)."""
    rng = np.random.default_rng(74)
    X = make_inputs(rng, (1, 2), (1, 1), 3, 3, 3, 4, 2, "poly")
    forward_backward(X, form_kwargs(causal=causal, logits="determinant"), "poly", np.float64)


def test_poly_window_on_cuda_matches_reference_and_cpu():
    """The windowed surrogate on the GPU (grouped heads, determinant logits): every result within
    the surrogate's accuracy of the dense reference, and equal to the CPU's windowed surrogate up
    to round-off (the same sums, tests/test_poly_window_cuda.py)."""
    X = make_inputs(np.random.default_rng(74), (1, 2), (1, 1), 3, 3, 3, 4, 2, "poly")
    kw = form_kwargs(window=(2, 3), logits="determinant")
    O, grads = forward_backward(X, kw, "poly", np.float64)
    mk = method_kwargs("poly", "cpu")
    O_cpu, state_cpu = ta.attention_forward(*X[:5], **kw, **mk)
    np.testing.assert_allclose(O, O_cpu, rtol=1e-12, atol=1e-14)
    for name, g, g_cpu in zip(NAMES, grads, ta.attention_backward(state_cpu, X[5])):
        np.testing.assert_allclose(g, g_cpu, rtol=1e-11, atol=1e-13, err_msg=f"{name}: cuda vs cpu")


def test_bad_forms_on_cuda():
    X = make_inputs(np.random.default_rng(75), (1, 2), (1, 2), 3, 3, 3, 3, 2, "exact")
    ta.attention(*X[:5], window=(1, 2), logits="determinant", **CUDA)  # positive control
    with pytest.raises((TypeError, ValueError), match="window"):
        ta.attention(*X[:5], window=(0, 2), **CUDA)
    with pytest.raises((TypeError, ValueError), match="logits"):
        ta.attention(*X[:5], logits="det", **CUDA)
    Y = make_inputs(np.random.default_rng(76), (1, 2), (1, 2), 3, 4, 3, 3, 2, "exact")
    with pytest.raises(ValueError, match="window"):
        ta.attention(*Y[:5], window=(2, 2), **CUDA)
    rng = np.random.default_rng(77)
    with pytest.raises(ValueError) as info:
        ta.attention(rng.standard_normal((1, 3, 3, 3)), *X[1:5], **CUDA)  # H = 3, Hk = 2
    assert "3" in str(info.value) and "2" in str(info.value)
