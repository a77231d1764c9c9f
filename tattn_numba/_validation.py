"""Input checking shared by every public entry point.

Everything a kernel would choke on is rejected here with a ``TypeError`` (wrong kind of
object or dtype) or a ``ValueError`` (wrong shape, empty, non-finite, impossible option),
each naming the argument and what was expected.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class AttentionInputs(NamedTuple):
    """Validated inputs with leading dimensions flattened into one batch axis.

    Arrays are C-contiguous, share one floating dtype, and have shapes
    Q (B, n, d), K1 (B, m1, d), K2 (B, m2, d), V1 (B, m1, dv), V2 (B, m2, dv).
    """

    Q: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    V1: np.ndarray
    V2: np.ndarray
    batch_shape: tuple
    scale: float
    causal: bool

    @property
    def dtype(self) -> np.dtype:
        return self.Q.dtype


def as_float_array(x, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """Return ``x`` as a finite float32/float64 ndarray or raise naming ``name``."""
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        arr = np.asarray(x)
    else:
        raise TypeError(f"{name} must be an array (numpy.ndarray or array-like), got {type(x).__name__}")
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the other inputs are {dtype}; "
            "all arrays must share one dtype (cast explicitly)"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf; all entries must be finite")
    return arr


def check_scale(scale, d: int) -> float:
    """Return the logit scale: ``1/d`` for ``None``, else a positive finite real."""
    if scale is None:
        return 1.0 / d
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a positive real number or None, got {type(scale).__name__}")
    value = float(scale)
    if not np.isfinite(value) or value <= 0.0:
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    return value


def check_flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_attention_inputs(Q, K1, K2, V1, V2, scale, causal) -> AttentionInputs:
    """Validate the five attention operands and return them batch-flattened.

    Raises
    ------
    TypeError
        Non-array input, unsupported or mixed dtypes, non-bool ``causal``, non-real ``scale``.
    ValueError
        Rank below 2, mismatched batch or feature dimensions, empty arrays, NaN/Inf entries,
        ``causal=True`` with unequal lengths, a non-positive or non-finite ``scale``.
    """
    q = as_float_array(Q, "Q")
    arrays = {"Q": q}
    for name, x in (("K1", K1), ("K2", K2), ("V1", V1), ("V2", V2)):
        arrays[name] = as_float_array(x, name, dtype=q.dtype)
    for name, arr in arrays.items():
        if arr.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., rows, features), got shape {arr.shape}")
    batch_shape = q.shape[:-2]
    for name, arr in arrays.items():
        if arr.shape[:-2] != batch_shape:
            raise ValueError(
                f"{name} has leading (batch) dimensions {arr.shape[:-2]} but Q has {batch_shape}; "
                "all inputs must share the same leading dimensions"
            )
    n, d = q.shape[-2:]
    m1, m2 = arrays["K1"].shape[-2], arrays["K2"].shape[-2]
    if arrays["K1"].shape[-1] != d:
        raise ValueError(f"K1 must have shape (..., m1, d={d}) to match Q, got {arrays['K1'].shape}")
    if arrays["K2"].shape[-1] != d:
        raise ValueError(f"K2 must have shape (..., m2, d={d}) to match Q, got {arrays['K2'].shape}")
    if arrays["V1"].shape[-2] != m1:
        raise ValueError(f"V1 must have shape (..., m1={m1}, dv) to match K1, got {arrays['V1'].shape}")
    if arrays["V2"].shape[-2] != m2:
        raise ValueError(f"V2 must have shape (..., m2={m2}, dv) to match K2, got {arrays['V2'].shape}")
    dv = arrays["V1"].shape[-1]
    if arrays["V2"].shape[-1] != dv:
        raise ValueError(
            f"V2 must have shape (..., m2, dv={dv}) with the same value width as V1, got {arrays['V2'].shape}"
        )
    causal = check_flag(causal, "causal")
    if causal and not n == m1 == m2:
        raise ValueError(f"causal=True needs n == m1 == m2 (self-attention), got n={n}, m1={m1}, m2={m2}")
    scale = check_scale(scale, d)
    flat = {name: np.ascontiguousarray(arr.reshape((-1,) + arr.shape[-2:])) for name, arr in arrays.items()}
    return AttentionInputs(flat["Q"], flat["K1"], flat["K2"], flat["V1"], flat["V2"], batch_shape, scale, causal)


def check_upstream(dO, inputs: AttentionInputs) -> np.ndarray:
    """Validate the upstream gradient ``dO`` against the forward inputs; return it batch-flattened."""
    arr = as_float_array(dO, "dO", dtype=inputs.dtype)
    B, n, _ = inputs.Q.shape
    dv = inputs.V1.shape[-1]
    expected = inputs.batch_shape + (n, dv)
    if arr.shape != expected:
        raise ValueError(f"dO must have the output's shape {expected} (..., n, dv), got {arr.shape}")
    return np.ascontiguousarray(arr.reshape(B, n, dv))


def check_memory(nbytes: int, what: str, budget: int) -> None:
    """Raise ``ValueError`` when an allocation of ``nbytes`` would pass ``budget``."""
    if nbytes > budget:
        raise ValueError(
            f"{what} needs {nbytes / 2**20:.1f} MiB, above the memory budget of {budget / 2**20:.1f} MiB "
            "(raise tattn_numba.config.MEMORY_BUDGET_BYTES or TATTN_NUMBA_MEMORY_BUDGET)"
        )


def cast_result(x: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """Cast a float64 result to the input ``dtype``; raise if it is not finite there.

    Inputs are finite, but a result can still leave the dtype's range (value products above
    float32's 3.4e38, say). That is reported instead of returning Inf or NaN.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = x.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        raise ValueError(
            f"the result {name} overflows {np.dtype(dtype).name} although the inputs are finite; "
            "rescale the inputs (or use float64)"
        )
    return out
