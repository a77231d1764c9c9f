"""Exact streaming tensor attention on the CPU (Numba ``njit``/``prange``).

Forward and backward never materialise the n×m1×m2 logit tensor. A task owns a tile of
query rows; for each tile of K2 columns and each row j1 of K1 it recomputes the logits
``logit[i, j1, c0:c1] = (scale·Q[i] ∘ K1[j1]) · K2[c0:c1]^T`` into a small buffer,
updates an online softmax (running max, running sum, rescaled accumulator) and contracts
the probabilities with V2 and V1 on the fly (SPEC §1–§2).

Three tiers (as in STUMPY): ``_forward_kernel``/``_backward_kernel`` take only arrays and
scalars; ``forward``/``backward`` allocate, transpose and reduce; the public functions in
:mod:`tattn_numba.attention` validate.

Precision (:func:`precision`): each input dtype is computed in its own precision. For float32
inputs the logit tiles, the exponentials, the value and gradient contractions inside a tile are
float32 (twice the SIMD width of float64); the online-softmax maximum and sum, the output
accumulator, δ and the gradient accumulators are float64, and the exponential's argument is
formed in float64 before one rounding. float32 inputs whose products could overflow float32 are
computed in float64 instead. The error contract is FlashAttention's (docs/exact_kernels.md).

Exponentials dominate the cost and Numba's SVML path is unavailable, so
:func:`_exp_shifted` is a range-reduced, auto-vectorising exp (see its docstring).

Work partition: ``workers = numba.get_num_threads()`` iterations of a ``prange`` loop, worker
``w`` taking tasks ``w, w + workers, …``. The interleaving balances causal work (late rows
have more pairs), and each worker owns its accumulator rows for dK1, dK2, dV1, dV2, summed
afterwards, so there is no race and the result is deterministic for a given thread count.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload
from numba.np.numpy_support import as_dtype

from .. import config
from .._validation import AttentionInputs, check_logit_range, check_memory
from ..mask import key_range_jit
from . import _simd
from .precision import Precision, choose

OPTIONS = frozenset()

_LOG2E = 1.4426950408889634
# ln 2 split so that k·_LN2_HI is exact for |k| < 2**11 (fdlibm's constants).
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
# exp(x) for x below this is replaced by exp(_EXP_FLOOR) ≈ 3.3e-308 (absolute error < 3.4e-308);
# above _EXP_CEIL by exp(_EXP_CEIL) ≈ 8.2e307 (the forward's lazy maximum only needs to see that
# the tile sum is large; the exponent bits must never wrap).
_EXP_FLOOR, _EXP_CEIL = -708.0, 709.0
# Taylor coefficients 1/k! of exp on |r| <= ln2/2: truncation error r**13/13! < 1.7e-16.
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = 1.0, 1.0, 1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720
_C7, _C8, _C9, _C10 = 1 / 5040, 1 / 40320, 1 / 362880, 1 / 3628800
_C11, _C12 = 1 / 39916800, 1 / 479001600
# The float32 exp: ln 2 = 355/512 + _LN2_LO32 (k·_LN2_HI32 exact in float32 for |k| < 2**15),
# Taylor coefficients to degree 7, all float32 scalars so that Numba keeps the arithmetic in
# float32. e^-87 ≈ 1.6e-38 is a normal float32; below it the float32 exp returns 0.
_LOG2E32, _HALF32 = np.float32(_LOG2E), np.float32(0.5)
_LN2_HI32, _LN2_LO32 = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_FLOOR32, _EXP_CEIL32, _ZERO32 = np.float32(-87.0), np.float32(88.0), np.float32(0.0)
_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = (np.float32(1 / math.factorial(k)) for k in range(8))

# The exp must not be compiled with ``reassoc``: LLVM would merge the two-constant range
# reduction (x − k·ln2_hi) − k·ln2_lo into x − k·ln2 and lose ~1e-13 of relative accuracy.
_EXP_FASTMATH = config.FASTMATH - {"reassoc"}


@intrinsic
def _wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with the widest vectors the CPU has (jitted code only).

    LLVM's tuning for Intel CPUs with AVX-512 prefers 256-bit vectors (a frequency guard for
    light loops); the tile loops here are dense arithmetic, and 512-bit vectors made the forward
    1.3× (float32) and 1.4× (float64) faster at d = 16 on such a CPU (docs/exact_rates.md). The
    function attribute ``"prefer-vector-width"="512"`` is set on the function being compiled
    only, never on the rest of the process; where the CPU has no 512-bit vectors it has no
    effect. llvmlite accepts only a fixed list of attribute names, so the string attribute is
    added to its attribute set directly; if a later llvmlite refuses that, the function simply
    keeps LLVM's default width.
    """
    sig = types.void()

    def codegen(context, builder, sig, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:
            pass
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _float64_from_bits(typingctx, bits):
    """Reinterpret an int64 as the float64 with the same bits (an LLVM ``bitcast``, free)."""
    signature = types.float64(types.int64)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return signature, codegen


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (an LLVM ``bitcast``, free)."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return signature, codegen


def _typed(like, x):
    """``x`` converted to the element type of the array ``like`` (jitted code only)."""


@overload(_typed, inline="always")
def _typed_for(like, x):
    cast = as_dtype(like.dtype).type

    def convert(like, x):
        return cast(x)

    return convert


@numba.njit(fastmath=_EXP_FASTMATH, cache=config.CACHE)
def _exp_in_place64(buf, count, scale, shift):
    """float64 ``buf[:count] = exp(scale·buf[:count] − shift)``, vectorised (see :func:`_exp_shifted`)."""
    _wide_vectors()
    for j in range(count):
        x = min(max(buf[j] * scale - shift, _EXP_FLOOR), _EXP_CEIL)
        k = np.floor(x * _LOG2E + 0.5)
        r = (x - k * _LN2_HI) - k * _LN2_LO
        p = _C12
        p = p * r + _C11
        p = p * r + _C10
        p = p * r + _C9
        p = p * r + _C8
        p = p * r + _C7
        p = p * r + _C6
        p = p * r + _C5
        p = p * r + _C4
        p = p * r + _C3
        p = p * r + _C2
        p = p * r + _C1
        p = p * r + _C0
        buf[j] = p * _float64_from_bits((np.int64(k) + 1023) << 52)


@numba.njit(fastmath=_EXP_FASTMATH, inline="always", cache=config.CACHE)
def _exp32(y):
    """float32 e^y of a float32 ``y`` (the loop body of :func:`_exp_in_place32` and
    :func:`_exp_in_place32_running`, inlined so that their loops vectorise): range reduction,
    degree-7 Taylor polynomial, 2^k from its exponent bits; 0 below −87."""
    x = min(max(y, _EXP_FLOOR32), _EXP_CEIL32)
    k = np.floor(x * _LOG2E32 + _HALF32)
    r = (x - k * _LN2_HI32) - k * _LN2_LO32
    p = _T7
    p = p * r + _T6
    p = p * r + _T5
    p = p * r + _T4
    p = p * r + _T3
    p = p * r + _T2
    p = p * r + _T1
    p = p * r + _T0
    e = p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))
    return e if y >= _EXP_FLOOR32 else _ZERO32


@numba.njit(fastmath=_EXP_FASTMATH, cache=config.CACHE)
def _exp_in_place32(buf, count, scale, shift):
    """float32 ``buf[:count] = exp(scale·buf[:count] − shift)``, vectorised (see :func:`_exp_shifted`).

    The argument is formed in float64 and rounded once: its rounding error eps32·|x| then
    costs at most eps32·|x|·e^x <= eps32/e of an exponentiated weight, however large the logits
    and the shift. Every later step is float32 (the constants are float32 scalars)."""
    _wide_vectors()
    for j in range(count):
        buf[j] = _exp32(np.float32(np.float64(buf[j]) * scale - shift))


@numba.njit(fastmath=_EXP_FASTMATH, cache=config.CACHE)
def _exp_in_place32_running(buf, count, scale, shift):
    """float32 ``buf[:count] = exp(scale·buf[:count] − shift)`` with the argument formed in float32:
    the forward's exp against its running maximum (:func:`_exp_running`), 1.5× faster than
    :func:`_exp_in_place32` (no conversions to float64 and back).

    ``shift`` must be a float32 number (the forward keeps its running maximum one,
    :func:`_running_shift`): then ``buf·scale32 − shift`` is one fused multiply-subtract, rounded
    once (eps32/2·|x|, as :func:`_exp_in_place32`). Rounding ``scale`` to float32 multiplies every
    logit of the call by the same 1 + δ, |δ| <= eps32/2, less than the float32 logit's own rounding.
    """
    _wide_vectors()
    scale32, shift32 = np.float32(scale), np.float32(shift)
    for j in range(count):
        buf[j] = _exp32(buf[j] * scale32 - shift32)


def _exp_in_place(buf, count, scale, shift):
    """``buf[:count] = exp(scale·buf[:count] − shift)`` in the precision of ``buf`` (jitted code only)."""


@overload(_exp_in_place, inline="always")
def _exp_in_place_for(buf, count, scale, shift):
    if buf.dtype == types.float32:
        return lambda buf, count, scale, shift: _exp_in_place32(buf, count, scale, shift)
    return lambda buf, count, scale, shift: _exp_in_place64(buf, count, scale, shift)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _exp_shifted(buf, count, scale, shift):
    """In place ``buf[:count] = exp(scale·buf[:count] − shift)``; return the float64 sum of the results.

    Range reduction x = k·ln2 + r with |r| <= ln2/2 (ln 2 split in two constants so that
    k·ln2_hi is exact), a Taylor polynomial for e^r, times 2^k built from its exponent bits
    (``2.0**k`` would not vectorise). float64 buffers: degree 12 (truncation r^13/13! < 1.7e-16),
    arguments clamped at −708, maximum relative error 2.3e-16 against libm (tested). float32
    buffers: every step in float32, degree 7 (truncation r^8/8! < 5.2e-9, a tenth of the float32
    unit roundoff), arguments below −87 give 0 (absolute error < e^−87 ≈ 1.6e-38), maximum
    relative error 0.61 ulp against the rounded float64 exp (tested), the argument
    ``scale·buf − shift`` formed in float64 and rounded once. The exp pass is compiled
    without ``reassoc`` (which would fold the two-constant range reduction into one and lose
    accuracy), the sum with it (so it vectorises); the sum is float64 for both buffer types.
    Timings per element are in docs/exact_kernels.md.

    Parameters
    ----------
    buf : ndarray of float64 or float32, shape (>= count,)
    count : int
    scale : float
        The logit scale: the kernels keep their tiles unscaled (one rounding fewer in float32).
    shift : float
        Subtracted after scaling, in float64; callers pass the running row maximum (forward) or the
        row's log-sum-exp (backward) so arguments are <= 0.
    """
    _wide_vectors()
    _exp_in_place(buf, count, scale, shift)
    total = 0.0
    for j in range(count):
        total += buf[j]
    return total


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _exp_running32(buf, count, scale, shift):
    _wide_vectors()
    _exp_in_place32_running(buf, count, scale, shift)
    total = 0.0
    for j in range(count):
        total += buf[j]
    return total


def _exp_running(buf, count, scale, shift):
    """:func:`_exp_shifted` against the forward's running maximum ``shift``, a value of
    :func:`_running_shift` (jitted code only): float32 buffers form the argument in float32
    (:func:`_exp_in_place32_running`), float64 buffers are :func:`_exp_shifted` itself."""


@overload(_exp_running, inline="always")
def _exp_running_for(buf, count, scale, shift):
    if buf.dtype == types.float32:
        return lambda buf, count, scale, shift: _exp_running32(buf, count, scale, shift)
    return lambda buf, count, scale, shift: _exp_shifted(buf, count, scale, shift)


def _running_shift(like, value):
    """``value`` as the forward keeps its running maximum for buffers like ``like`` (jitted code
    only): rounded to a float32 number for float32 buffers (so :func:`_exp_running` subtracts it
    exactly), unchanged for float64."""


@overload(_running_shift, inline="always")
def _running_shift_for(like, value):
    if like.dtype == types.float32:
        return lambda like, value: np.float64(np.float32(value))
    return lambda like, value: value


#: The forward's lazy maximum accepts a tile exponentiated against the running maximum M when its
#: weights sum to at most e^excess (so every logit is below M + excess): float32 tiles keep
#: weights and value sums far from overflow with 30, float64 with 200.
LAZY_EXCESS32, LAZY_EXCESS64 = 30.0, 200.0


def _lazy_excess(like):
    """The lazy maximum's excess for the precision of ``like`` (jitted code only)."""


@overload(_lazy_excess, inline="always")
def _lazy_excess_for(like):
    excess = LAZY_EXCESS32 if like.dtype == types.float32 else LAZY_EXCESS64
    return lambda like: excess


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _tile_max(buf, count):
    """Largest of ``buf[:count]``; eight running maxima so the loop vectorises (6x faster)."""
    _wide_vectors()
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = buf[0]
    j = 0
    while j + 8 <= count:
        c0 = max(c0, buf[j])
        c1 = max(c1, buf[j + 1])
        c2 = max(c2, buf[j + 2])
        c3 = max(c3, buf[j + 3])
        c4 = max(c4, buf[j + 4])
        c5 = max(c5, buf[j + 5])
        c6 = max(c6, buf[j + 6])
        c7 = max(c7, buf[j + 7])
        j += 8
    while j < count:
        c0 = max(c0, buf[j])
        j += 1
    return max(max(max(c0, c1), max(c2, c3)), max(max(c4, c5), max(c6, c7)))


# Tiles live in flat per-worker buffers with an explicit leading dimension ``ld*``. The
# inner loops index one-dimensional row views: with a signed offset (``out[o + j]``) Numba
# emits a negative-index wraparound test per element, which stops LLVM from vectorising
# (measured 6x slower). Views of worker-private buffers cost one uncontended
# reference-count update each.


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm_row(coef, c, Y, ldy, o, inner, cols):
    """``o[:cols] += Σ_k coef[c + k] · Y[k, :cols]``: one output row of :func:`_mm` (the rows
    after its whole groups of four), ``k`` unrolled by four."""
    _wide_vectors()
    k = 0
    while k + 4 <= inner:
        w0, w1, w2, w3 = coef[c + k], coef[c + k + 1], coef[c + k + 2], coef[c + k + 3]
        y0 = Y[k * ldy: k * ldy + cols]
        y1 = Y[(k + 1) * ldy: (k + 1) * ldy + cols]
        y2 = Y[(k + 2) * ldy: (k + 2) * ldy + cols]
        y3 = Y[(k + 3) * ldy: (k + 3) * ldy + cols]
        for j in range(cols):
            o[j] += w0 * y0[j] + w1 * y1[j] + w2 * y2[j] + w3 * y3[j]
        k += 4
    while k < inner:
        w0 = coef[c + k]
        y0 = Y[k * ldy: k * ldy + cols]
        for j in range(cols):
            o[j] += w0 * y0[j]
        k += 1


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm_block_4x2(coef, c, ldc, Y, y, ldy, out, o, ldo, inner, accumulate, count0, count1):
    """One 4 × (2 vectors) block of :func:`_mm_block`: rows from ``coef[c]`` and ``out[o]``,
    columns from ``Y[y]`` and ``out[o]``; ``count0``/``count1`` are the columns of each vector
    that exist, or None for whole vectors (compiled separately: plain loads, no masks)."""
    width = _simd.lanes(out)
    if accumulate:
        s00, s01 = _simd.load_first(out, o, count0), _simd.load_first(out, o + width, count1)
        s10, s11 = _simd.load_first(out, o + ldo, count0), _simd.load_first(out, o + ldo + width, count1)
        s20, s21 = _simd.load_first(out, o + 2 * ldo, count0), _simd.load_first(out, o + 2 * ldo + width, count1)
        s30, s31 = _simd.load_first(out, o + 3 * ldo, count0), _simd.load_first(out, o + 3 * ldo + width, count1)
    else:
        s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = _simd.zeros(out)
    for k in range(inner):
        y0, y1 = _simd.load_first(Y, y, count0), _simd.load_first(Y, y + width, count1)
        w = _simd.element(coef, c + k)
        s00, s01 = _simd.fma(s00, w, y0), _simd.fma(s01, w, y1)
        w = _simd.element(coef, c + ldc + k)
        s10, s11 = _simd.fma(s10, w, y0), _simd.fma(s11, w, y1)
        w = _simd.element(coef, c + 2 * ldc + k)
        s20, s21 = _simd.fma(s20, w, y0), _simd.fma(s21, w, y1)
        w = _simd.element(coef, c + 3 * ldc + k)
        s30, s31 = _simd.fma(s30, w, y0), _simd.fma(s31, w, y1)
        y += ldy
    _simd.store_first(out, o, s00, count0)
    _simd.store_first(out, o + width, s01, count1)
    _simd.store_first(out, o + ldo, s10, count0)
    _simd.store_first(out, o + ldo + width, s11, count1)
    _simd.store_first(out, o + 2 * ldo, s20, count0)
    _simd.store_first(out, o + 2 * ldo + width, s21, count1)
    _simd.store_first(out, o + 3 * ldo, s30, count0)
    _simd.store_first(out, o + 3 * ldo + width, s31, count1)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm_block(coef, ldc, Y, ldy, out, ldo, rows, inner, cols, accumulate):
    """:func:`_mm` for ``rows`` a multiple of 4, any ``cols``.

    A register-blocked micro-kernel as in a BLAS (:func:`_mm_block_4x2`): a 4 × (2 vectors)
    block of ``out`` is held in eight :class:`~tattn_numba.exact._simd.Vector` accumulators (half
    the CPU's vector registers, :data:`~tattn_numba.exact._simd.VECTOR_BYTES`) for the whole inner
    loop, and each inner index loads two vectors of ``Y`` and four scalars of ``coef`` for eight
    vector fused multiply-adds; the block is loaded (``accumulate``) or zeroed once and stored
    once. The last block of a row may be narrower than two vectors: its loads and stores are
    masked to the columns that exist (whole blocks use plain loads: masks cost 5–20 %).
    """
    _wide_vectors()
    width = _simd.lanes(out)
    whole = cols - cols % (2 * width)
    for a in range(0, rows, 4):
        for j in range(0, whole, 2 * width):
            _mm_block_4x2(coef, a * ldc, ldc, Y, j, ldy, out, a * ldo + j, ldo, inner, accumulate, None, None)
        if whole < cols:
            _mm_block_4x2(coef, a * ldc, ldc, Y, whole, ldy, out, a * ldo + whole, ldo, inner, accumulate,
                          min(width, cols - whole), max(cols - whole - width, 0))


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm(coef, ldc, Y, ldy, out, ldo, rows, inner, cols, accumulate):
    """``out[a, :cols] (+)= Σ_k coef[a, k] · Y[k, :cols]`` for ``a < rows``, ``k < inner``.

    Row-major flat operands with leading dimensions ``ldc``, ``ldy``, ``ldo``; ``out`` is zeroed
    first unless ``accumulate``. Whole groups of four rows go through the register-blocked
    micro-kernel :func:`_mm_block` (every column), the remaining rows one at a time through the
    vectorised loop :func:`_mm_row`.
    """
    _wide_vectors()
    block_rows = rows - rows % 4
    if block_rows > 0:
        _mm_block(coef, ldc, Y, ldy, out, ldo, block_rows, inner, cols, accumulate)
    for a in range(block_rows, rows):
        o = out[a * ldo: a * ldo + cols]
        if not accumulate:
            o[:] = 0.0
        _mm_row(coef, a * ldc, Y, ldy, o, inner, cols)


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm_nt_row(x, Y, ldy, out, o, k0, outcols, inner):
    """``out[o + k] = Σ_j x[j] · Y[k, j]`` for ``k0 <= k < outcols``: one row of :func:`_mm_nt`,
    four dot products at a time so each load of ``x`` feeds four vector accumulators."""
    _wide_vectors()
    k = k0
    while k + 4 <= outcols:
        y0 = Y[k * ldy: k * ldy + inner]
        y1 = Y[(k + 1) * ldy: (k + 1) * ldy + inner]
        y2 = Y[(k + 2) * ldy: (k + 2) * ldy + inner]
        y3 = Y[(k + 3) * ldy: (k + 3) * ldy + inner]
        s0 = s1 = s2 = s3 = _typed(out, 0)
        for j in range(inner):
            s0 += x[j] * y0[j]
            s1 += x[j] * y1[j]
            s2 += x[j] * y2[j]
            s3 += x[j] * y3[j]
        out[o + k] = s0
        out[o + k + 1] = s1
        out[o + k + 2] = s2
        out[o + k + 3] = s3
        k += 4
    while k < outcols:
        y0 = Y[k * ldy: k * ldy + inner]
        s0 = _typed(out, 0)
        for j in range(inner):
            s0 += x[j] * y0[j]
        out[o + k] = s0
        k += 1


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _mm_nt(X, ldx, Y, ldy, out, ldo, rows, outcols, inner):
    """``out[a, k] = Σ_j X[a, j] · Y[k, j]`` for ``a < rows``, ``k < outcols``, ``j < inner``.

    Dot products over contiguous rows, register-blocked 4 × 4: four rows of ``X`` against four of
    ``Y`` in one vectorised pass, sixteen accumulators fed by eight loads (1.7–1.9× the rate of
    one row of ``X`` against four of ``Y``, docs/exact_rates.md); the remaining rows and columns go
    through :func:`_mm_nt_row`.
    """
    _wide_vectors()
    a = 0
    while a + 4 <= rows:
        x0 = X[a * ldx: a * ldx + inner]
        x1 = X[(a + 1) * ldx: (a + 1) * ldx + inner]
        x2 = X[(a + 2) * ldx: (a + 2) * ldx + inner]
        x3 = X[(a + 3) * ldx: (a + 3) * ldx + inner]
        k = 0
        while k + 4 <= outcols:
            y0 = Y[k * ldy: k * ldy + inner]
            y1 = Y[(k + 1) * ldy: (k + 1) * ldy + inner]
            y2 = Y[(k + 2) * ldy: (k + 2) * ldy + inner]
            y3 = Y[(k + 3) * ldy: (k + 3) * ldy + inner]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = _typed(out, 0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = _typed(out, 0)
            for j in range(inner):
                a0, a1, a2, a3 = x0[j], x1[j], x2[j], x3[j]
                b0, b1, b2, b3 = y0[j], y1[j], y2[j], y3[j]
                s00 += a0 * b0
                s01 += a0 * b1
                s02 += a0 * b2
                s03 += a0 * b3
                s10 += a1 * b0
                s11 += a1 * b1
                s12 += a1 * b2
                s13 += a1 * b3
                s20 += a2 * b0
                s21 += a2 * b1
                s22 += a2 * b2
                s23 += a2 * b3
                s30 += a3 * b0
                s31 += a3 * b1
                s32 += a3 * b2
                s33 += a3 * b3
            o = a * ldo + k
            out[o], out[o + 1], out[o + 2], out[o + 3] = s00, s01, s02, s03
            o += ldo
            out[o], out[o + 1], out[o + 2], out[o + 3] = s10, s11, s12, s13
            o += ldo
            out[o], out[o + 1], out[o + 2], out[o + 3] = s20, s21, s22, s23
            o += ldo
            out[o], out[o + 1], out[o + 2], out[o + 3] = s30, s31, s32, s33
            k += 4
        if k < outcols:
            _mm_nt_row(x0, Y, ldy, out, a * ldo, k, outcols, inner)
            _mm_nt_row(x1, Y, ldy, out, (a + 1) * ldo, k, outcols, inner)
            _mm_nt_row(x2, Y, ldy, out, (a + 2) * ldo, k, outcols, inner)
            _mm_nt_row(x3, Y, ldy, out, (a + 3) * ldo, k, outcols, inner)
        a += 4
    while a < rows:
        _mm_nt_row(X[a * ldx: a * ldx + inner], Y, ldy, out, a * ldo, 0, outcols, inner)
        a += 1


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _row_times_block(x, b, i, yT, kb, j0, count, factor, out):
    """``out[l, jj] = (factor · x[b, i, l]) · yT[kb, l, j0 + jj]``: a query row times a key block,
    in ``out``'s precision (one rounding when ``factor`` is 1)."""
    _wide_vectors()
    for l in range(x.shape[2]):
        q = _typed(out, factor * x[b, i, l])
        row = yT[kb, l, j0: j0 + count]
        o = out[l * count: (l + 1) * count]
        for jj in range(count):
            o[jj] = q * row[jj]


@numba.njit(fastmath=config.FASTMATH, cache=config.CACHE)
def _dot(x, y, count):
    """``Σ_{j < count} x[j]·y[j]`` summed in the precision of ``x`` (vectorised), as float64."""
    _wide_vectors()
    total = _typed(x, 0)
    for j in range(count):
        total += x[j] * y[j]
    return np.float64(total)


@numba.njit(inline="always", cache=config.CACHE)
def _task_box(task, n, chunks, heads, group, m1, m2, mask):
    """Key/value entry ``kb``, query row ``i`` and query heads ``[g0, g1)`` of its group for
    ``task`` (= (kb·chunks + chunk)·n + i, ``chunks`` = ceil(group / heads) chunks of at most
    ``heads`` query heads), and the row's mask box ``[start1, end1) × [start2, end2)`` (``mask``
    from :meth:`tattn_numba.mask.Mask.kernel_args`), the same for every head of the chunk."""
    entry = task // n
    i = task - entry * n
    kb = entry // chunks
    g0 = (entry - kb * chunks) * heads
    start1, end1 = key_range_jit(mask[0], mask[1], i, m1)
    start2, end2 = key_range_jit(mask[0], mask[2], i, m2)
    return kb, i, g0, min(group, g0 + heads), start1, end1, start2, end2


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _forward_kernel(Q, K1T, K2, V1T, V2T, members, heads, scale, folded, mask, tile1, tile2, workers, O, lse):
    """Streaming forward (SPEC §1), in the precision of the inputs (float32 or float64).

    Q (B,n,d), K1T (Bk,d,m1), K2 (Bk,m2·d) (K2 flattened), V1T (Bk,dv,m1), V2T (Bk,dv·m2) (V2
    transposed and flattened) in; ``members`` (Bk, G): the batch entries of each key entry's group (grouped heads,
    :class:`tattn_numba.heads.HeadLayout`; G = 1 without); O (B,n,dv) and lse (B,n) out; ``mask``
    is :meth:`tattn_numba.mask.Mask.kernel_args`; ``folded`` puts the scale into the query row
    instead of the exponent (:class:`Precision`). A task is one query row i of up to ``heads``
    query heads of one group: it loops over blocks of ``tile1`` rows of K1 and ``tile2`` rows of
    K2 inside the row's mask box, and every head of the task uses each block while it is in the
    cache. Per head and block it forms the unscaled logit tile S[j2, j1] = K2 · (Q_i ∘ K1)^T,
    updates the running maximum of scale·S, exponentiates in place and accumulates
    T[m, j1] += V2^T · P; each finished K1 block is folded into the head's output row with V1.
    The running maximum and sum, the output accumulator and the fold are float64 whatever the
    input precision; the key blocks are read in place (no copies).
    """
    n, d = Q.shape[1], Q.shape[2]
    Bk, group = members.shape
    m1, m2, dv = K1T.shape[2], K2.shape[1] // d, V1T.shape[1]
    chunks = (group + heads - 1) // heads
    row_factor, logit_scale = (scale, 1.0) if folded else (1.0, scale)
    lazy_limit = math.exp(_lazy_excess(Q))
    for w in numba.prange(workers):
        _wide_vectors()
        a_t = np.empty((heads, d * tile1), Q.dtype)
        t_t = np.empty((heads, dv * tile1), Q.dtype)
        s_t = np.empty(tile2 * tile1, Q.dtype)
        acc = np.empty((heads, dv))
        row_max = np.empty(heads)
        row_sum = np.empty(heads)
        for task in range(w, Bk * chunks * n, workers):
            kb, i, g0, g1, start1, end1, start2, end2 = _task_box(task, n, chunks, heads, group, m1, m2, mask)
            row_max[:] = -np.inf
            row_sum[:] = 0.0
            acc[:] = 0.0
            for j0 in range(start1, end1, tile1):
                c1 = min(tile1, end1 - j0)
                for g in range(g1 - g0):
                    _row_times_block(Q, members[kb, g0 + g], i, K1T, kb, j0, c1, row_factor, a_t[g])
                    t_t[g, : dv * c1] = 0.0
                for k0 in range(start2, end2, tile2):
                    c2 = min(tile2, end2 - k0)
                    k2_blk = K2[kb, k0 * d: (k0 + c2) * d]
                    v2t_blk = V2T[kb, k0:]  # rows of length m2 from column k0 on
                    for g in range(g1 - g0):
                        t_g = t_t[g]
                        _mm(k2_blk, d, a_t[g], c1, s_t, c1, c2, d, c1, False)
                        # Lazy maximum: exponentiate against the running maximum M at once, M
                        # seeded on the row's first tile by that tile's first logit; only a tile
                        # whose weights pass e^LAZY_EXCESS (a logit far above M) is recomputed
                        # against its own maximum, rescaling the sums.
                        if row_max[g] == -np.inf:
                            row_max[g] = _running_shift(s_t, logit_scale * s_t[0])
                        tile_sum = _exp_running(s_t, c2 * c1, logit_scale, row_max[g])
                        if not tile_sum <= lazy_limit:
                            _mm(k2_blk, d, a_t[g], c1, s_t, c1, c2, d, c1, False)
                            tile_max = _running_shift(s_t, logit_scale * _tile_max(s_t, c2 * c1))
                            if tile_max > row_max[g]:
                                corr = math.exp(row_max[g] - tile_max)
                                row_sum[g] *= corr
                                for m in range(dv):
                                    acc[g, m] *= corr
                                for jj in range(dv * c1):
                                    t_g[jj] *= corr
                                row_max[g] = tile_max
                            tile_sum = _exp_running(s_t, c2 * c1, logit_scale, row_max[g])
                        row_sum[g] += tile_sum
                        _mm(v2t_blk, m2, s_t, c1, t_g, c1, dv, c2, c1, True)
                for g in range(g1 - g0):
                    for m in range(dv):
                        acc[g, m] += _dot(t_t[g, m * c1: (m + 1) * c1], V1T[kb, m, j0:], c1)
            for g in range(g1 - g0):
                b = members[kb, g0 + g]
                inv = 1.0 / row_sum[g]
                for m in range(dv):
                    O[b, i, m] = acc[g, m] * inv
                lse[b, i] = row_max[g] + math.log(row_sum[g])


@numba.njit(parallel=True, fastmath=config.FASTMATH, cache=config.CACHE)
def _backward_kernel(Q, K1T, K2, K2T, V1T, V2, V2T, members, heads, dO, lse, delta, scale, folded, mask, tile1,
                     tile2, workers, dQ, dK1T, dK2, dV1T, dV2):
    """Streaming backward (SPEC §2) from the forward's ``lse``; ``delta = rowsum(dO ∘ O)``.

    Tasks, blocks and heads as in :func:`_forward_kernel`; K2 (Bk,m2·d) and V2 (Bk,m2·dv)
    flattened, K2T (Bk,d·m2) and V2T (Bk,dv·m2) transposed and flattened. Per head and block:
    P = exp(scale·S − lse_i), dS = V2 · (dO_i ∘ V1)^T, dZ = P ∘ (dS − δ_i); then U = K2^T dZ and
    PV = V2^T P feed dQ, dK1 and dV1, and dK2 += scale·dZ A^T, dV2 += P G^T with A = Q_i ∘ K1
    (scale·Q_i ∘ K1 when ``folded``), G = dO_i ∘ V1, all in the precision of the arrays; the sums
    over a K1 block are added into float64. dQ (B,n,d) is written directly (a row belongs to one
    task); dK1T (W,Bk,d,m1), dK2 (W,Bk,m2,d), dV1T (W,Bk,dv,m1), dV2 (W,Bk,m2,dv) are per-worker
    accumulators, summed by the caller; the heads of a group add into their key entry there.
    """
    n, d = Q.shape[1], Q.shape[2]
    Bk, group = members.shape
    m1, m2, dv = K1T.shape[2], K2.shape[1] // d, V1T.shape[1]
    chunks = (group + heads - 1) // heads
    row_factor, logit_scale = (scale, 1.0) if folded else (1.0, scale)
    for w in numba.prange(workers):
        _wide_vectors()
        a_t = np.empty((heads, d * tile1), Q.dtype)
        g_t = np.empty((heads, dv * tile1), Q.dtype)
        u_t = np.empty((heads, d * tile1), Q.dtype)
        pv_t = np.empty((heads, dv * tile1), Q.dtype)
        p_t = np.empty(tile2 * tile1, Q.dtype)
        dz_t = np.empty(tile2 * tile1, Q.dtype)
        dk2_blk = np.empty(tile2 * d, Q.dtype)
        dv2_blk = np.empty(tile2 * dv, Q.dtype)
        for task in range(w, Bk * chunks * n, workers):
            kb, i, g0, g1, start1, end1, start2, end2 = _task_box(task, n, chunks, heads, group, m1, m2, mask)
            for j0 in range(start1, end1, tile1):
                c1 = min(tile1, end1 - j0)
                for g in range(g1 - g0):
                    b = members[kb, g0 + g]
                    _row_times_block(Q, b, i, K1T, kb, j0, c1, row_factor, a_t[g])
                    _row_times_block(dO, b, i, V1T, kb, j0, c1, 1.0, g_t[g])
                for k0 in range(start2, end2, tile2):
                    c2 = min(tile2, end2 - k0)
                    k2_blk = K2[kb, k0 * d: (k0 + c2) * d]
                    v2_blk = V2[kb, k0 * dv: (k0 + c2) * dv]
                    k2t_blk = K2T[kb, k0:]  # rows of length m2 from column k0 on
                    v2t_blk = V2T[kb, k0:]
                    first = k0 == start2
                    for g in range(g1 - g0):
                        b = members[kb, g0 + g]
                        di = _typed(p_t, delta[b, i])
                        _mm(k2_blk, d, a_t[g], c1, p_t, c1, c2, d, c1, False)
                        _exp_shifted(p_t, c2 * c1, logit_scale, lse[b, i])
                        _mm(v2_blk, dv, g_t[g], c1, dz_t, c1, c2, dv, c1, False)
                        for jj in range(c2 * c1):
                            dz_t[jj] = p_t[jj] * (dz_t[jj] - di)
                        _mm(k2t_blk, m2, dz_t, c1, u_t[g], c1, d, c2, c1, not first)
                        _mm(v2t_blk, m2, p_t, c1, pv_t[g], c1, dv, c2, c1, not first)
                        _mm_nt(dz_t, c1, a_t[g], c1, dk2_blk, d, c2, d, c1)
                        _mm_nt(p_t, c1, g_t[g], c1, dv2_blk, dv, c2, dv, c1)
                        for cc in range(c2):
                            dk2 = dK2[w, kb, k0 + cc]
                            dk2_row = dk2_blk[cc * d: (cc + 1) * d]
                            for l in range(d):
                                dk2[l] += logit_scale * dk2_row[l]
                            dv2 = dV2[w, kb, k0 + cc]
                            dv2_row = dv2_blk[cc * dv: (cc + 1) * dv]
                            for m in range(dv):
                                dv2[m] += dv2_row[m]
                for g in range(g1 - g0):
                    b = members[kb, g0 + g]
                    for l in range(d):
                        u_row = u_t[g, l * c1: (l + 1) * c1]
                        dQ[b, i, l] += scale * _dot(u_row, K1T[kb, l, j0:], c1)
                        ql = scale * np.float64(Q[b, i, l])
                        dk1 = dK1T[w, kb, l, j0: j0 + c1]
                        for jj in range(c1):
                            dk1[jj] += ql * u_row[jj]
                    for m in range(dv):
                        gm = np.float64(dO[b, i, m])
                        pv_row = pv_t[g, m * c1: (m + 1) * c1]
                        dv1 = dV1T[w, kb, m, j0: j0 + c1]
                        for jj in range(c1):
                            dv1[jj] += gm * pv_row[jj]


def _transposed(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 1), dtype=dtype)


def _tiles(itemsize: int) -> tuple[int, int]:
    """(rows of K1, rows of K2) per logit tile: ``config.KEY_TILE_1`` × ``config.KEY_TILE_2`` in
    float64, twice the K1 rows in float32 (the same bytes; measured 1.1–1.3× faster than 128 rows
    in float32, docs/exact_kernels.md)."""
    return config.KEY_TILE_1 * (8 // itemsize), config.KEY_TILE_2


def _flat(x: np.ndarray) -> np.ndarray:
    """(Bk, rows, cols) C-contiguous -> the (Bk, rows·cols) view the kernels slice key blocks from."""
    return x.reshape(x.shape[0], -1)


def _members(inputs: AttentionInputs) -> np.ndarray:
    """(Bk, G) batch entries of each key entry's group, in order (every group has G members)."""
    return np.argsort(inputs.key_batch, kind="stable").reshape(inputs.K1.shape[0], -1)


def _heads_per_task(inputs: AttentionInputs) -> int:
    """Query heads of a group that share a task's key blocks: ``config.QUERY_HEADS_PER_TASK``,
    fewer when the group is smaller or when the tasks would be too few to keep every thread busy."""
    B, n = inputs.Q.shape[:2]
    group = len(inputs.key_batch) // inputs.K1.shape[0]
    enough = max(1, (B * n) // (4 * numba.get_num_threads()))
    return max(1, min(config.QUERY_HEADS_PER_TASK, group, enough))


def _column_abs_max(x: np.ndarray) -> np.ndarray:
    """Column maxima of |x| over axis 1, float64, without an |x| temporary."""
    return np.maximum(x.max(axis=1), -x.min(axis=1)).astype(np.float64)


def precision(inputs: AttentionInputs, dO: np.ndarray | None = None) -> Precision:
    """The working precision of the exact CPU kernels for ``inputs`` (and the backward's ``dO``):
    :func:`tattn_numba.exact.precision.choose` on the host column maxima. Cost O((n + m1 + m2)·(d + dv))."""
    values = None if dO is None else tuple(_column_abs_max(x) for x in (dO, inputs.V1, inputs.V2))
    return choose(inputs.dtype, inputs.scale, inputs.key_batch,
                  tuple(_column_abs_max(x) for x in (inputs.Q, inputs.K1, inputs.K2)), values)


class MemoryEstimate(NamedTuple):
    """Peak extra bytes of the exact CPU path (:func:`memory_estimate`).

    forward
        Peak of ``attention_forward`` (``attention`` with ``for_backward=False``), the arrays it
        returns included.
    kept
        What the forward leaves alive for the backward: the float64 O and lse, and the copies
        the caller gets.
    backward
        Peak of ``attention_backward`` on top of ``kept``, the gradients it returns included.
    """

    forward: int
    kept: int
    backward: int

    @property
    def total(self) -> int:
        """Peak of a forward followed by its backward (``attention_grad``)."""
        return max(self.forward, self.kept + self.backward)


#: Factor on the memory estimates for what a byte count of arrays misses: partly touched pages
#: and interpreter objects (measured: under 0.1 % of the peak).
MEMORY_SLACK = 1.01


def memory_estimate(B: int, n: int, m1: int, m2: int, d: int, dv: int, itemsize: int, workers: int,
                    backward_workers: int | None = None, *, for_backward: bool = True,
                    tile1: int | None = None, tile2: int | None = None, key_entries: int | None = None,
                    compute_itemsize: int | None = None, heads: int | None = None) -> MemoryEstimate:
    """Peak extra bytes of the exact CPU forward and backward, every problem-sized allocation
    counted, phase by phase (the largest phase is the peak).

    The kernels compute in the precision of ``compute_itemsize`` (the inputs' ``itemsize`` by
    default; 8 for float32 inputs too large for float32 logits, :func:`precision`): inputs of
    another itemsize get working copies once per pass (Q, K2, and in the backward V2 and dO);
    K1, V1, V2 (and in the backward K2) are always copied transposed, in the compute precision.
    O, lse, δ and the gradient accumulators are float64. Per-thread tiles hold ``heads`` query
    heads (``config.QUERY_HEADS_PER_TASK`` by default, an upper bound). Forward: those copies,
    O and lse, the per-thread tiles; then the cast of O to the input dtype (and its finiteness mask) and the copies of O
    and lse that ``attention_forward`` hands out. Backward: the copies, δ, dQ, the race-free
    per-thread accumulators (``backward_workers`` × Bk·(m1 + m2)·(d + dv) floats), their
    reductions one at a time, then the casts of the gradients. The finiteness masks of the
    validation (one byte per entry) are counted as their own phases. ``key_entries`` is Bk, the
    key/value batch entries (B by default; fewer with grouped heads).
    """
    Bk = B if key_entries is None else key_entries
    c = itemsize if compute_itemsize is None else compute_itemsize
    tile1 = _tiles(c)[0] if tile1 is None else tile1
    tile2 = _tiles(c)[1] if tile2 is None else tile2
    backward_workers = workers if backward_workers is None else backward_workers
    heads = config.QUERY_HEADS_PER_TASK if heads is None else heads
    f8 = 8
    widen = 1 if c != itemsize else 0  # working copies in the compute precision
    narrow = 1 if itemsize != 8 else 0  # float64 results cast to the input dtype
    out_o, out_lse = B * n * dv * f8, B * n * f8
    transposed = Bk * (m1 * (d + dv) + m2 * dv) * c  # K1, V1, V2
    # validation: np.isfinite(x).all() of each operand, one byte per entry
    masks = max(B * n * d, Bk * max(m1 * d, m2 * d, m1 * dv, m2 * dv))
    tiles_forward = workers * ((heads * (d + dv) * tile1 + tile2 * tile1) * c + heads * (dv + 2) * f8)
    kernel = widen * (B * n * d + Bk * m2 * d) * c + transposed + out_o + out_lse + tiles_forward
    cast = B * n * dv * (narrow * itemsize + 1)  # O in the input dtype and its finiteness mask
    handed_out = B * n * dv * itemsize + out_lse if for_backward else 0  # attention_forward's private copies
    forward = max(masks, kernel, out_o + out_lse + max(cast, handed_out))
    kept = out_o + out_lse + (B * n * dv * itemsize + out_lse if for_backward else narrow * B * n * dv * itemsize)

    dq = B * n * d * f8
    acc = [backward_workers * Bk * size * f8 for size in (d * m1, m2 * d, dv * m1, m2 * dv)]
    tiles_backward = backward_workers * c * (2 * heads * (d + dv) * tile1 + 2 * tile2 * tile1 + tile2 * (d + dv))
    kernel = (widen * (B * (n * d + n * dv) + Bk * (m2 * d + m2 * dv)) * c + B * n * f8 + dq + sum(acc)
              + transposed + Bk * m2 * d * c + tiles_backward)
    # reductions after the kernel (copies freed): sum over threads, transposed copy, accumulator freed
    reduced = [Bk * m1 * d * f8, Bk * m2 * d * f8, Bk * m1 * dv * f8, Bk * m2 * dv * f8]
    reduce_peaks = [
        dq + sum(acc) + 2 * reduced[0],
        dq + sum(acc[1:]) + sum(reduced[:2]),
        dq + sum(acc[2:]) + sum(reduced[:2]) + 2 * reduced[2],
        dq + acc[3] + sum(reduced),
    ]
    grads = dq + sum(reduced)
    elements = grads // f8
    casts = grads + narrow * elements * itemsize + max(B * n * d, Bk * max(m1 * d, m2 * d, m1 * dv, m2 * dv))
    backward = max(B * n * dv, kernel, *reduce_peaks, casts)
    return MemoryEstimate(*(int(MEMORY_SLACK * x) for x in (forward, kept, backward)))


def _backward_workers(forward_flops: float) -> int:
    """Threads the backward will run on, seen from inside the forward (both as
    :func:`tattn_numba._threads.threads_for` decides): the current count, or the process's
    maximum when the forward runs serially for being small but the backward (three times the
    work) will not."""
    workers = numba.get_num_threads()
    if workers == 1 and forward_flops < config.SERIAL_BELOW_FLOPS <= 3 * forward_flops:
        return int(numba.config.NUMBA_NUM_THREADS)
    return workers


def _shape_text(inputs: AttentionInputs) -> str:
    B, n, d = inputs.Q.shape
    return (f"B={B}, n={n}, m1={inputs.K1.shape[1]}, m2={inputs.K2.shape[1]}, d={d}, dv={inputs.V1.shape[2]}, "
            f"{np.dtype(inputs.dtype).name}")


def _longer_extent_inner(inputs: AttentionInputs, compute: np.dtype) -> tuple[AttentionInputs, bool]:
    """``inputs`` with the two key sets exchanged when that puts the longer per-row key extent on
    the inner side of the tiles, and whether it did.

    The logit and the value are symmetric in the two key sets (SPEC §1). A task does work once per
    block of K1 rows (A = Q_i ∘ K1_block, the fold of T with V1), memory-bound and spread over the
    K2 rows the block meets, while the K1 extent is the columns of every tile product. So when the
    K1 extent is the longer one and the K2 extent still fills a block of the micro-kernel
    (:func:`_mm_block`), the sets change places: a (512, 32) window in float64 costs about as much
    per pair as a (32, 512) one then (docs/forms_benchmarks.md). Full self-attention and causal
    masks are symmetric and never swap. The caller exchanges the key gradients back."""
    _, extent1, extent2 = inputs.mask.kernel_args(inputs.K1.shape[1], inputs.K2.shape[1])
    if not extent1 > extent2 >= 2 * _simd.VECTOR_BYTES // np.dtype(compute).itemsize:
        return inputs, False
    return inputs._replace(K1=inputs.K2, K2=inputs.K1, V1=inputs.V2, V2=inputs.V1, mask=inputs.mask.swapped()), True


def inputs_memory_estimate(inputs: AttentionInputs, *, for_backward: bool = True,
                           backward_workers: int | None = None, compute: np.dtype | None = None) -> MemoryEstimate:
    """:func:`memory_estimate` for validated inputs, with the thread counts the passes will use
    (called from the forward; the backward passes its own ``backward_workers``) and the working
    precision ``compute`` (:func:`precision` by default)."""
    B, n, d = inputs.Q.shape
    m1, m2, dv = inputs.K1.shape[1], inputs.K2.shape[1], inputs.V1.shape[2]
    if backward_workers is None:
        backward_workers = _backward_workers(2.0 * B * n * m1 * m2 * (d + dv))
    compute = precision(inputs).dtype if compute is None else compute
    return memory_estimate(B, n, m1, m2, d, dv, np.dtype(inputs.dtype).itemsize, numba.get_num_threads(),
                           backward_workers, for_backward=for_backward, key_entries=inputs.K1.shape[0],
                           compute_itemsize=np.dtype(compute).itemsize)


def forward(inputs: AttentionInputs, *, for_backward: bool = True) -> tuple[np.ndarray, np.ndarray, None, None]:
    """Exact forward. Returns O (B, n, dv) and lse (B, n), both float64, no certificate and
    nothing else to save (the backward needs only O and lse).

    Computes in the inputs' precision (:func:`precision`; the softmax statistics and the output
    accumulator are float64). Time Θ(B·n·m1·m2·(d + dv)); extra memory O(B·(n + m1 + m2)·(d + dv))
    for the transposed copies of K1 and V1 plus O(tile1·tile2 + (tile1 + tile2)·(d + dv)) per
    thread. Before allocating anything it refuses (``ValueError``) when :func:`memory_estimate`
    (with ``for_backward``, the forward and the backward together) passes
    ``config.MEMORY_BUDGET_BYTES``.
    """
    check_logit_range(inputs.scale, *(_column_abs_max(x) for x in (inputs.Q, inputs.K1, inputs.K2)),
                      inputs.key_batch)
    compute = precision(inputs)
    shape_text = _shape_text(inputs)
    inputs, _ = _longer_extent_inner(inputs, compute.dtype)
    estimate = inputs_memory_estimate(inputs, for_backward=for_backward, compute=compute.dtype)
    check_memory((estimate.total if for_backward else estimate.forward) + inputs.held_bytes,
                 f"the exact {'forward and backward' if for_backward else 'forward'} ({shape_text})",
                 config.MEMORY_BUDGET_BYTES)
    Q, K2 = (np.ascontiguousarray(x, dtype=compute.dtype) for x in (inputs.Q, inputs.K2))
    B, n, _ = Q.shape
    O = np.empty((B, n, inputs.V2.shape[2]))
    lse = np.empty((B, n))
    _forward_kernel(Q, _transposed(inputs.K1, compute.dtype), _flat(K2), _transposed(inputs.V1, compute.dtype),
                    _flat(_transposed(inputs.V2, compute.dtype)), _members(inputs), _heads_per_task(inputs),
                    inputs.scale, compute.folded, inputs.mask.kernel_args(inputs.K1.shape[1], inputs.K2.shape[1]),
                    *_tiles(compute.dtype.itemsize), numba.get_num_threads(), O, lse)
    return O, lse, None, None


def backward(inputs: AttentionInputs, O: np.ndarray, lse: np.ndarray, certificate: None, saved: None,
             dO: np.ndarray) -> tuple[np.ndarray, ...]:
    """Exact backward from the forward's float64 ``O`` and ``lse``.

    Returns float64 (dQ, dK1, dK2, dV1, dV2). δ = rowsum(dO ∘ O) uses the float64 output, so
    float32 inputs do not pay for the rounding of O in their gradients; the kernels compute in
    the inputs' precision (:func:`precision`) and accumulate the gradients in float64.

    Time Θ(B·n·m1·m2·(d + dv)) (three times the forward's contractions); extra memory
    O(workers·B·(m1 + m2)·(d + dv)) float64 for the race-free accumulators. Refuses
    (``ValueError``) before allocating when :func:`memory_estimate`'s backward part passes
    ``config.MEMORY_BUDGET_BYTES``.
    """
    workers = numba.get_num_threads()
    compute = precision(inputs, dO)
    shape_text = _shape_text(inputs)
    inputs, swapped = _longer_extent_inner(inputs, compute.dtype)
    check_memory(inputs_memory_estimate(inputs, backward_workers=workers, compute=compute.dtype).backward
                 + inputs.held_bytes,
                 f"the exact backward ({shape_text}, {workers} thread{'s' if workers > 1 else ''} "
                 "with their own gradient accumulators)", config.MEMORY_BUDGET_BYTES)
    Q, K2, V2, dO = (np.ascontiguousarray(x, dtype=compute.dtype) for x in (inputs.Q, inputs.K2, inputs.V2, dO))
    delta = np.einsum("bnm,bnm->bn", dO, O, dtype=np.float64)
    B, n, d = Q.shape
    Bk, m1, m2, dv = K2.shape[0], inputs.K1.shape[1], K2.shape[1], V2.shape[2]
    dQ = np.zeros((B, n, d))
    dK1T = np.zeros((workers, Bk, d, m1))
    dK2 = np.zeros((workers, Bk, m2, d))
    dV1T = np.zeros((workers, Bk, dv, m1))
    dV2 = np.zeros((workers, Bk, m2, dv))
    _backward_kernel(Q, _transposed(inputs.K1, compute.dtype), _flat(K2), _flat(_transposed(K2, compute.dtype)),
                     _transposed(inputs.V1, compute.dtype), _flat(V2), _flat(_transposed(V2, compute.dtype)),
                     _members(inputs), _heads_per_task(inputs), dO, np.ascontiguousarray(lse, dtype=np.float64),
                     delta, inputs.scale, compute.folded, inputs.mask.kernel_args(m1, m2),
                     *_tiles(compute.dtype.itemsize), workers, dQ, dK1T, dK2, dV1T, dV2)
    del Q, K2, V2, dO, delta  # free any working copies before the reductions
    dK1 = np.ascontiguousarray(dK1T.sum(axis=0).transpose(0, 2, 1))
    del dK1T
    dK2 = dK2.sum(axis=0)
    dV1 = np.ascontiguousarray(dV1T.sum(axis=0).transpose(0, 2, 1))
    del dV1T
    dV2 = dV2.sum(axis=0)
    return (dQ, dK2, dK1, dV2, dV1) if swapped else (dQ, dK1, dK2, dV1, dV2)
