"""The CPU kernel's building blocks and its tiling: every multi-tile path, at small sizes.

The public tests run at n <= 12, below the default tile sizes (KEY_TILE_1 = 128 rows of K1,
KEY_TILE_2 = 32 rows of K2), where a row's logits fit in one tile. Here the tile sizes are
patched down so the block loops, their remainders, the online-softmax rescaling between tiles
and the per-worker accumulation of dK2/dV2 all run; plus one size above the default tiles.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tattn_numba as ta
from reference import assert_forward_matches, assert_grads_match, make_inputs
from tattn_numba import config
from tattn_numba.exact import _simd, cpu

pytestmark = pytest.mark.usefixtures("warm_kernels")


# --- the vectorised exp -------------------------------------------------------------------

def test_exp_matches_libm_on_its_range():
    """Max relative error against np.exp on [-708, 0] below 4 ulp (measured 2.3e-16)."""
    x = np.concatenate([-np.geomspace(1e-12, 708.0, 200_001), [0.0, -0.5, -np.log(2) / 2, -708.0]])
    buf = x.copy()
    total = cpu._exp_shifted(buf, buf.size, 1.0, 0.0)
    rel = np.abs(buf / np.exp(x) - 1.0)
    assert rel.max() < 4 * np.finfo(np.float64).eps, rel.max()
    assert total == pytest.approx(np.exp(x).sum(), rel=1e-13)


def test_exp_shift_is_subtracted_first():
    x = np.linspace(990.0, 1000.0, 1001)
    buf = x.copy()
    cpu._exp_shifted(buf, buf.size, 1.0, 1000.0)
    np.testing.assert_allclose(buf, np.exp(x - 1000.0), rtol=4 * np.finfo(np.float64).eps)


def test_exp_below_floor_is_tiny_not_garbage():
    """Arguments below -708 are clamped: the result stays a tiny positive number, never wraps."""
    x = np.array([-709.0, -745.0, -1e4, -1e300])
    buf = x.copy()
    cpu._exp_shifted(buf, buf.size, 1.0, 0.0)
    assert np.all(buf > 0.0) and np.all(buf <= 3.4e-308)


def test_exp_touches_only_count_entries():
    buf = np.full(10, -1.0)
    cpu._exp_shifted(buf, 3, 1.0, 0.0)
    np.testing.assert_allclose(buf[:3], np.exp(-1.0), rtol=1e-15)
    assert np.all(buf[3:] == -1.0)


# --- tile helpers -------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 7, 8, 9, 16, 17, 63])
def test_tile_max_all_counts(count):
    rng = np.random.default_rng(count)
    buf = rng.standard_normal(80)
    buf[count:] = 1e9  # beyond count: must be ignored
    buf[rng.integers(count)] = 50.0  # the maximum somewhere inside, not always first
    assert cpu._tile_max(buf, count) == 50.0


# Shapes of the product by the micro-kernel's block (4 rows × 2 vectors of w lanes); a pair
# (a, b) of columns means a·w + b: below one block, exactly whole blocks, and whole blocks with
# remaining rows and columns.
MM_SHAPES = [(1, 1, 1), (3, 4, 5), (5, 7, 9), (2, 16, 33), (4, 3, 8), (4, 16, (2, 0)), (8, 1, (4, 0)),
             (3, 5, (2, 0)), (4, 6, (2, -1)), (9, 7, (2, 3)), (11, 32, (4, 1)), (16, 0, (2, 0))]


@pytest.mark.parametrize("rows, inner, cols", MM_SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mm_against_matmul(rows, inner, cols, accumulate, dtype):
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    if isinstance(cols, tuple):
        cols = cols[0] * lanes + cols[1]
    rng = np.random.default_rng(rows * 100 + inner * 10 + cols)
    ldc, ldy, ldo = inner + 2, cols + 3, cols + 1  # leading dimensions larger than the tile
    coef = rng.standard_normal((rows, ldc)).astype(dtype)
    Y = rng.standard_normal((inner, ldy)).astype(dtype)
    out = rng.standard_normal((rows, ldo)).astype(dtype)
    expected = coef[:, :inner].astype(float) @ Y[:, :cols] + (out[:, :cols] if accumulate else 0.0)
    untouched = out[:, cols:].copy()
    cpu._mm(coef.ravel(), ldc, Y.ravel(), ldy, out.ravel(), ldo, rows, inner, cols, accumulate)
    tol = 1e-13 if dtype == np.float64 else 4e-6 * np.sqrt(inner + 1)
    np.testing.assert_allclose(out[:, :cols], expected, rtol=tol, atol=tol)
    assert np.array_equal(out[:, cols:], untouched)


@st.composite
def _products(draw):
    """A product of any size around the micro-kernel's block, padded leading dimensions, entries
    of mixed magnitudes (cancellation included), either dtype, accumulating or not."""
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    rows, inner, cols = draw(st.integers(0, 13)), draw(st.integers(0, 9)), draw(st.integers(0, 4 * lanes + 3))
    ldc, ldy, ldo = (size + draw(st.integers(0, 3)) for size in (inner, cols, cols))
    entries = st.floats(-1e3, 1e3, allow_subnormal=False, width=np.dtype(dtype).itemsize * 8)
    arrays = [np.array(draw(st.lists(entries, min_size=r * c, max_size=r * c)), dtype).reshape(r, c)
              for r, c in ((rows, ldc), (inner, ldy), (rows, ldo))]
    return dtype, rows, inner, cols, *arrays, draw(st.booleans())


@given(p=_products())
def test_mm_any_shape_against_float64(p):
    """Every split into micro-kernel blocks and remainder loops gives the product, to the
    rounding of sums of ``inner`` products (found by the thorough profile: float32 products of
    entries near 1e-33 and 1e-38 underflow, hence the absolute floor), and leaves the padding
    alone."""
    dtype, rows, inner, cols, coef, Y, out, accumulate = p
    ldc, ldy, ldo = coef.shape[1], Y.shape[1], out.shape[1]
    before = out.astype(float)
    cpu._mm(coef.ravel(), ldc, Y.ravel(), ldy, out.ravel(), ldo, rows, inner, cols, accumulate)
    c, y = coef[:, :inner].astype(float), Y[:, :cols].astype(float)
    expected = c @ y + (before[:, :cols] if accumulate else 0.0)
    magnitude = np.abs(c) @ np.abs(y) + (np.abs(before[:, :cols]) if accumulate else 0.0)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny  # tiny: products that underflow
    assert np.all(np.abs(out[:, :cols] - expected) <= (inner + 1) * (eps * magnitude + tiny))
    assert np.array_equal(out[:, cols:], before[:, cols:])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("partial", [False, True])
def test_mm_block_keeps_its_block_in_vector_registers(dtype, partial):
    """The micro-kernel's block is written with whole :class:`Vector` values: eight vector fused
    multiply-adds per inner index, one per accumulator (no scalar or per-lane fallback); whole
    blocks load and store without masks, the last, narrower block of a row with them."""
    lanes = _simd.VECTOR_BYTES // np.dtype(dtype).itemsize
    block = numba.njit(fastmath=config.FASTMATH)(cpu._mm_block_4x2.py_func)
    x = np.zeros(8 * lanes, dtype)
    counts = (lanes, 3) if partial else (None, None)
    block(x, 0, 2, x, 0, 2 * lanes, x, 0, 2 * lanes, 2, True, *counts)
    [ir] = block.inspect_llvm().values()
    suffix = "f64" if dtype == np.float64 else "f32"
    calls = [line for line in ir.splitlines() if f"call <{lanes} x" in line and f"@llvm.fma.v{lanes}{suffix}" in line]
    assert len(calls) == 8  # eight accumulators, one FMA each per inner index
    assert ("@llvm.masked.load" in ir) == partial and ("@llvm.masked.store" in ir) == partial


def _axpy(x, y, a):
    cpu._wide_vectors()
    for j in range(x.size):
        y[j] += a * x[j]


def test_wide_vectors_marks_only_the_calling_function():
    """The attribute reaches LLVM on the function that asks for it (no disk cache, so the IR is
    inspectable), the widest registers are used where the CPU has them, and a function that does
    not ask keeps LLVM's default."""
    wide = numba.njit(fastmath=config.FASTMATH)(_axpy)
    x, y = np.ones(64), np.zeros(64)
    wide(x, y, 2.0)
    assert np.array_equal(y, np.full(64, 2.0))
    [ir] = wide.inspect_llvm().values()
    assert '"prefer-vector-width"="512"' in ir

    @numba.njit
    def plain(x, y, a):
        for j in range(x.size):
            y[j] += a * x[j]

    plain(x, y, 1.0)
    [plain_ir] = plain.inspect_llvm().values()
    assert "prefer-vector-width" not in plain_ir
    if "+avx512f" in llvm.get_host_cpu_features().flatten():
        [asm] = wide.inspect_asm().values()
        assert "zmm" in asm


# --- tiling of the full kernels -------------------------------------------------------------

TILES = [(1, 1), (2, 3), (3, 2), (4, 5), (8, 8)]


@pytest.fixture(params=TILES, ids=lambda t: f"tiles{t[0]}x{t[1]}")
def small_tiles(request, monkeypatch):
    tile1, tile2 = request.param
    monkeypatch.setattr(config, "KEY_TILE_1", tile1)
    monkeypatch.setattr(config, "KEY_TILE_2", tile2)
    monkeypatch.setattr(config, "SERIAL_BELOW_FLOPS", 0)  # all workers, even for tiny problems
    return request.param


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_multi_tile_forward_and_backward(small_tiles, causal, dtype):
    rng = np.random.default_rng(7)
    n, m1, m2 = (11, 11, 11) if causal else (9, 13, 11)
    Q, K1, K2, V1, V2, dO = make_inputs(rng, (2,), n, m1, m2, 5, 3, dtype=dtype, magnitude=1.5, with_dO=True)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=causal)
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, causal=causal)
    grads = ta.attention_backward(state, dO)
    assert_grads_match(grads, Q, K1, K2, V1, V2, dO, causal=causal)


def test_running_max_rises_across_tiles(small_tiles):
    """Later key tiles hold larger logits, so the online softmax must rescale what it summed."""
    rng = np.random.default_rng(3)
    n, m, d = 4, 12, 3
    Q = np.abs(rng.standard_normal((n, d))) + 0.5
    K1 = np.linspace(0.1, 6.0, m)[:, None] * np.ones((m, d))
    K2 = np.linspace(0.1, 6.0, m)[:, None] * np.ones((m, d))
    V1, V2, dO = rng.standard_normal((m, 2)), rng.standard_normal((m, 2)), rng.standard_normal((n, 2))
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, scale=1.0)
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, scale=1.0)
    assert_grads_match(ta.attention_backward(state, dO), Q, K1, K2, V1, V2, dO, scale=1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("step", [0.5, 40.0, 300.0])
def test_lazy_maximum_recomputes_tiles_far_above_the_running_maximum(small_tiles, dtype, step):
    """Logits rising by ``step`` from one key row to the next: below the lazy maximum's excess
    (30 in float32, 200 in float64) the tiles are taken against the first tile's first logit;
    above it every tile must be recomputed against its own maximum, the row's first tile too
    (its first logit, the seed of the running maximum, is the tile's smallest here), and a
    wrapped exponent, a weight past e^709, would show up here as garbage."""
    rng = np.random.default_rng(13)
    n, m = 3, 10
    Q = np.ones((n, 1))
    K1 = (step * np.arange(m))[:, None]
    K2 = np.ones((m, 1))
    V1, V2, dO = rng.standard_normal((m, 2)), rng.standard_normal((m, 2)), rng.standard_normal((n, 2))
    X = [x.astype(dtype) for x in (Q, K1, K2, V1, V2)]
    O, state = ta.attention_forward(*X, scale=1.0)
    assert np.all(np.isfinite(O)) and np.all(np.isfinite(state.lse))
    assert_forward_matches(O, state.lse, *X, scale=1.0)
    assert_grads_match(ta.attention_backward(state, dO.astype(dtype)), *X, dO.astype(dtype), scale=1.0)


@pytest.mark.parametrize("causal, dtype", [(False, np.float64), (True, np.float64), (False, np.float32)])
def test_beyond_default_tiles(causal, dtype):
    """n, m1, m2 above the default tiles (KEY_TILE_1 = 128 rows of K1 in float64, 256 in float32;
    KEY_TILE_2 = 32) with remainders."""
    rng = np.random.default_rng(11)
    n, m1, m2 = (150, 150, 150) if causal else (70, 131 if dtype == np.float64 else 300, 45)
    Q, K1, K2, V1, V2, dO = make_inputs(rng, (), n, m1, m2, 6, 4, dtype=dtype, with_dO=True)
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=causal)
    assert_forward_matches(O, state.lse, Q, K1, K2, V1, V2, causal=causal)
    assert_grads_match(ta.attention_backward(state, dO), Q, K1, K2, V1, V2, dO, causal=causal)


@pytest.mark.parametrize("heads", [1, 3, 8])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_heads_share_key_blocks(monkeypatch, heads, causal, dtype):
    """8 query heads over 2 key/value heads, computed ``heads`` to a task (chunks of 1, of 3 with a
    remainder of 2, all 8): the same as every query head on its own copy of its key head, with
    the key gradients summed over the group (small tiles, so every head crosses block edges)."""
    monkeypatch.setattr(config, "QUERY_HEADS_PER_TASK", heads)
    monkeypatch.setattr(config, "KEY_TILE_1", 4)
    monkeypatch.setattr(config, "KEY_TILE_2", 3)
    monkeypatch.setattr(config, "SERIAL_BELOW_FLOPS", 0)
    rng = np.random.default_rng(21)
    n = 9
    Q, dO = (rng.standard_normal((2, 8, n, k)).astype(dtype) for k in (4, 3))
    K1, K2, V1, V2 = (rng.standard_normal((2, 2, n, k)).astype(dtype) for k in (4, 4, 3, 3))
    O, state = ta.attention_forward(Q, K1, K2, V1, V2, causal=causal)
    grads = ta.attention_backward(state, dO)
    repeated = [np.repeat(x, 4, axis=1) for x in (K1, K2, V1, V2)]
    O_ref, state_ref = ta.attention_forward(Q, *repeated, causal=causal)
    grads_ref = ta.attention_backward(state_ref, dO)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(O, O_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(state.lse, state_ref.lse, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads.dQ, grads_ref.dQ, rtol=rtol, atol=rtol)
    for g, g_ref in zip(grads[1:], grads_ref[1:]):
        summed = g_ref.astype(np.float64).reshape(2, 2, 4, n, -1).sum(axis=2)
        np.testing.assert_allclose(g, summed, rtol=rtol, atol=10 * rtol)
    assert_forward_matches(O_ref, state_ref.lse, Q, *repeated, causal=causal)
    assert_grads_match(grads_ref, Q, *repeated, dO, causal=causal)


def test_single_thread_matches_parallel(monkeypatch):
    """Per-worker accumulators: the result does not depend on the number of threads."""
    import numba

    monkeypatch.setattr(config, "SERIAL_BELOW_FLOPS", 0)

    rng = np.random.default_rng(5)
    Q, K1, K2, V1, V2, dO = make_inputs(rng, (3,), 10, 9, 8, 4, 3, with_dO=True)
    default = ta.attention_grad(Q, K1, K2, V1, V2, dO)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = ta.attention_grad(Q, K1, K2, V1, V2, dO)
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(default, single):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", [{"method": "exact"}, {"method": "poly", "degree": 10}], ids=["exact", "poly"])
def test_modified_inputs_are_detected(method):
    """Changing an input between attention_forward and attention_backward must not silently
    give the gradients of another problem: the state's fingerprints catch it."""
    rng = np.random.default_rng(9)
    Q, K1, K2, V1, V2, dO = make_inputs(rng, (), 5, 6, 7, 3, 2, with_dO=True)
    _, state = ta.attention_forward(Q, K1, K2, V1, V2, **method)
    ta.attention_backward(state, dO)  # unchanged inputs: fine, and repeatable
    K1[2, 1] += 1.0
    with pytest.raises(ValueError, match="K1 was modified"):
        ta.attention_backward(state, dO)
    K1[2, 1] -= 1.0
    ta.attention_backward(state, dO)


def test_memory_budget_is_enforced(monkeypatch):
    monkeypatch.setattr(config, "MEMORY_BUDGET_BYTES", 1024)
    rng = np.random.default_rng(0)
    Q, K1, K2, V1, V2, dO = make_inputs(rng, (), 8, 40, 40, 4, 4, with_dO=True)
    with pytest.raises(ValueError, match="memory budget"):
        ta.attention_grad(Q, K1, K2, V1, V2, dO)


def test_small_problems_run_on_one_thread(monkeypatch):
    """Below config.SERIAL_BELOW_FLOPS the Numba loops get one thread (waking the pool costs more
    than the work); the caller's thread count is restored afterwards."""
    import numba

    from tattn_numba._threads import threads_for

    before = numba.get_num_threads()
    with threads_for(10.0) as workers:
        assert workers == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with threads_for(config.SERIAL_BELOW_FLOPS) as workers:
        assert workers == before
