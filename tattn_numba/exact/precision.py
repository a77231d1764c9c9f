"""The working precision of the exact kernels: one rule for the CPU and the GPU.

float32 inputs are computed in float32 (twice the SIMD width on the CPU, the full float32 rate on
GPUs whose float64 units run at 1/32 to 1/64 of it), with float64 softmax statistics and
gradient accumulators; float64 inputs in float64. The only question is whether the float32
intermediates can overflow, which the column maxima of the inputs answer before any work
(docs/exact_kernels.md, "Precision").
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["FLOAT32_COMPUTE_LIMIT", "FLOAT64_COMPUTE_LIMIT", "Precision", "choose"]

#: Largest bound on the kernels' float32 intermediates (logit term sums, Q ∘ K products, dO·V1·V2
#: sums) for which float32 inputs are computed in float32: far below float32's 3.4e38, so tile
#: sums of thousands of terms cannot overflow.
FLOAT32_COMPUTE_LIMIT = 2.0**64
#: The same for float64 computation (as :func:`tattn_numba._validation.check_logit_range`).
FLOAT64_COMPUTE_LIMIT = 1e300


class Precision(NamedTuple):
    """How the exact kernels compute (:func:`choose`).

    dtype
        The kernels' working precision: the inputs' own, except float32 inputs whose
        intermediates could overflow float32 (then float64).
    folded
        Whether the logit scale multiplies the query row before the products (needed when the
        unscaled products Q ∘ K could overflow the working precision although the scaled ones
        cannot, with small scales) instead of multiplying the logit inside the exponential
        (one rounding fewer).
    """

    dtype: np.dtype
    folded: bool


def _product_bound(key_batch: np.ndarray, first: np.ndarray, *key_maxima: np.ndarray) -> float:
    """max over batch entries b of Σ_l first[b, l]·Π key_max[key_batch[b], l], and of each
    first·key_max product (the kernels form both), in float64 (inf or nan when that overflows)."""
    with np.errstate(over="ignore", invalid="ignore"):
        keys = [k[key_batch] for k in key_maxima]
        total = first * np.prod(keys, axis=0)
        partial = max(float((first * k).max()) for k in keys)
        return max(float(total.sum(axis=1).max()), partial)


def choose(dtype, scale: float, key_batch: np.ndarray, logit_maxima: tuple[np.ndarray, np.ndarray, np.ndarray],
           value_maxima: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Precision:
    """The working precision for inputs of ``dtype`` with logit scale ``scale``.

    Parameters
    ----------
    dtype : float32 or float64
    scale : float
    key_batch : ndarray of int, shape (B,)
        The key/value entry of each batch entry (:class:`tattn_numba.heads.HeadLayout`).
    logit_maxima : (q, k1, k2)
        Column maxima of |Q| (B, d), |K1| and |K2| (Bk, d), float64.
    value_maxima : (dO, v1, v2), optional
        For the backward: column maxima of |dO| (B, dv), |V1| and |V2| (Bk, dv).

    float32 inputs are computed in float32 when every intermediate is bounded by
    :data:`FLOAT32_COMPUTE_LIMIT`: the unscaled logit term sums Σ_l |Q_l|·|K1_l|·|K2_l| (or the
    scaled ones, with the scale folded into Q), the products Q ∘ K1 and Q ∘ K2, and for the backward
    Σ_m |dO_m|·|V1_m|·|V2_m|; otherwise in float64, folded when the unscaled products pass
    :data:`FLOAT64_COMPUTE_LIMIT`. Cost O(B·(d + dv)).
    """
    unscaled = _product_bound(key_batch, *logit_maxima)
    if np.dtype(dtype) == np.float32:
        values = 0.0 if value_maxima is None else _product_bound(key_batch, *value_maxima)
        if values <= FLOAT32_COMPUTE_LIMIT:
            if unscaled <= FLOAT32_COMPUTE_LIMIT:
                return Precision(np.dtype(np.float32), False)
            if scale * unscaled <= FLOAT32_COMPUTE_LIMIT:
                return Precision(np.dtype(np.float32), True)
    return Precision(np.dtype(np.float64), not unscaled <= FLOAT64_COMPUTE_LIMIT)
