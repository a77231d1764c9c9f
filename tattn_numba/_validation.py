"""Input checking shared by every public entry point.

Everything a kernel would choke on is rejected here with a ``TypeError`` (wrong kind of
object or dtype) or a ``ValueError`` (wrong shape, empty, non-finite, impossible option),
each naming the argument and what was expected.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _cuda, _registry
from .heads import HeadLayout, head_layout
from .logits import check_logits
from .mask import Mask, check_mask

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class AttentionInputs(NamedTuple):
    """Validated inputs with leading dimensions flattened into one batch axis.

    Arrays are C-contiguous, share one floating dtype, and have shapes Q (Bq, n, d),
    K1 (Bk, m1, d), K2 (Bk, m2, d), V1 (Bk, m1, dv), V2 (Bk, m2, dv), on the compute device
    (numba device arrays for ``device="cuda"``). ``heads`` maps the B output entries onto Q's Bq
    and the keys' Bk entries (:class:`tattn_numba.heads.HeadLayout`: grouped heads and
    broadcasting). ``mask`` says which key pairs each query row sees
    (:class:`tattn_numba.mask.Mask`); ``logits`` names the logit form
    (:mod:`tattn_numba.logits`); ``host_io`` whether the caller passed host arrays (then results
    go back to the host) or GPU arrays (results stay there).

    What the implementations receive are the *kernel inputs*
    (:func:`tattn_numba.attention.kernel_inputs`): Q expanded to B entries where it broadcasts and
    Q, K1, K2 lifted to the trilinear form of ``logits``; ``held_bytes`` counts what those copies
    hold, which the implementations add to their own memory estimates.
    """

    Q: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    V1: np.ndarray
    V2: np.ndarray
    heads: HeadLayout
    scale: float
    mask: Mask
    device: str = "cpu"
    host_io: bool = True
    logits: str = "trilinear"
    held_bytes: int = 0

    @property
    def dtype(self) -> np.dtype:
        return self.Q.dtype

    @property
    def copied_operands(self) -> str:
        """What :func:`tattn_numba.attention.kernel_inputs` copies for these inputs, in words (for
        memory messages): the lifted operands, or Q expanded to every output entry."""
        return "the lifted operands" if self.logits != "trilinear" else "Q expanded to every output entry"

    @property
    def batch_shape(self) -> tuple:
        """Leading dimensions of the output."""
        return self.heads.batch_shape

    @property
    def key_batch(self) -> np.ndarray:
        """(B,) int64: the flat key/value entry of each output entry."""
        return self.heads.key_batch

    @property
    def ops(self):
        """The device's array operations (:func:`tattn_numba._registry.array_ops`)."""
        return _registry.array_ops(self.device)


def as_float_array(x, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """Return ``x`` as a finite float32/float64 ndarray or raise naming ``name``.

    ndarray subclasses are viewed as plain ndarrays (no copy): an ``np.matrix`` is its 2-D
    array of rows, whose ``reshape`` and ``*`` would otherwise follow matrix rules. A
    ``numpy.ma.MaskedArray`` is accepted only when no entry is masked (then its data is used);
    with masked entries it raises ``ValueError``: masks are not supported (the kernels would read
    the hidden values), fill them explicitly with ``.filled(value)`` or use ``causal=True`` for the
    causal mask. Ragged nested sequences raise ``ValueError`` naming ``name``.
    """
    if _cuda.is_device_array(x):
        raise TypeError(
            f"{name} is a GPU array; pass device='cuda' to compute on the GPU, or copy it to the host first"
        )
    if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
        raise ValueError(
            f"{name} is a numpy.ma.MaskedArray with {int(np.ma.count_masked(x))} masked entries; masks are "
            f"not supported: pass {name}.filled(value) to choose the masked values explicitly (or causal=True "
            "for the causal mask)"
        )
    if type(x) is np.ndarray:
        arr = x
    elif isinstance(x, np.ndarray) or hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        try:
            arr = np.asarray(x)  # also a plain-ndarray view of a subclass (np.matrix, unmasked MaskedArray)
        except ValueError as exc:
            if "inhomogeneous" in str(exc):
                raise ValueError(
                    f"{name} is a ragged nested sequence (rows of different lengths); pass a rectangular "
                    "array of shape (..., rows, features)"
                ) from exc
            raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
        except TypeError as exc:
            raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
    else:
        raise TypeError(f"{name} must be an array (numpy.ndarray or array-like), got {type(x).__name__}")
    check_dtype_and_size(arr, name, dtype)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf; all entries must be finite")
    return arr


def check_dtype_and_size(arr, name: str, dtype: np.dtype | None) -> None:
    """Raise naming ``name`` unless ``arr`` is a non-empty float32/float64 array of ``dtype``
    (any of the two when ``dtype`` is None)."""
    if arr.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {arr.dtype} but the other inputs are {dtype}; "
            "all arrays must share one dtype (cast explicitly)"
        )
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")


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


def check_attention_inputs(Q, K1, K2, V1, V2, scale, causal, device: str = "cpu", mask=None, window=None,
                           logits: str = "trilinear") -> AttentionInputs:
    """Validate the five attention operands and return them batch-flattened on the compute device.

    ``mask`` (a :class:`~tattn_numba.mask.Mask` or None) and its shorthands ``causal`` and
    ``window`` give the mask; ``logits`` the logit form. K1, K2, V1, V2 share their leading
    dimensions; Q's leading dimensions group over them (the last one, heads) or broadcast
    against them (:func:`tattn_numba.heads.head_layout`). The device's array operations
    (:func:`tattn_numba._registry.array_ops`) check the operands: for ``device="cuda"`` all host
    arrays (validated here, then copied to the GPU) or all GPU arrays (used in place).

    Raises
    ------
    TypeError
        Non-array input, unsupported or mixed dtypes, non-bool ``causal``, a ``mask`` that is not
        a Mask, a ``window`` that is not a pair of ints, non-real ``scale``, non-string ``logits``.
    ValueError
        Rank below 2, K1, K2, V1, V2 with different leading dimensions, query heads that are not a
        multiple of the key/value heads, leading dimensions that do not broadcast, mismatched
        feature dimensions, empty arrays, NaN/Inf entries, ragged nested sequences, masked arrays
        with masked entries (see :func:`as_float_array`), a mask that does not fit the lengths
        (``causal=True`` or a window with unequal lengths), a window entry below 1, both ``mask``
        and a shorthand, a non-positive or non-finite ``scale``, an unknown ``logits``.
    """
    ops = _registry.array_ops(device)
    arrays, host_io = ops.check_operands({"Q": Q, "K1": K1, "K2": K2, "V1": V1, "V2": V2})
    shapes = {name: tuple(arr.shape) for name, arr in arrays.items()}  # plain tuples (the simulator's refuse [-1])
    for name, shape in shapes.items():
        if len(shape) < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., rows, features), got shape {shape}")
    key_shape = shapes["K1"][:-2]
    for name in ("K2", "V1", "V2"):
        if shapes[name][:-2] != key_shape:
            raise ValueError(
                f"{name} has leading (batch, head) dimensions {shapes[name][:-2]} but K1 has {key_shape}; "
                "K1, K2, V1, V2 must share their leading dimensions (Q's may group or broadcast over them)"
            )
    heads = head_layout(shapes["Q"][:-2], key_shape)
    n, d = shapes["Q"][-2:]
    m1, m2 = shapes["K1"][-2], shapes["K2"][-2]
    if shapes["K1"][-1] != d:
        raise ValueError(f"K1 must have shape (..., m1, d={d}) to match Q, got {arrays['K1'].shape}")
    if shapes["K2"][-1] != d:
        raise ValueError(f"K2 must have shape (..., m2, d={d}) to match Q, got {arrays['K2'].shape}")
    if shapes["V1"][-2] != m1:
        raise ValueError(f"V1 must have shape (..., m1={m1}, dv) to match K1, got {arrays['V1'].shape}")
    if shapes["V2"][-2] != m2:
        raise ValueError(f"V2 must have shape (..., m2={m2}, dv) to match K2, got {arrays['V2'].shape}")
    dv = shapes["V1"][-1]
    if shapes["V2"][-1] != dv:
        raise ValueError(
            f"V2 must have shape (..., m2, dv={dv}) with the same value width as V1, got {arrays['V2'].shape}"
        )
    mask = check_mask(mask, causal, window)
    mask.check_shapes(n, m1, m2)
    logits = check_logits(logits)
    scale = check_scale(scale, d)
    flat = {name: ops.to_compute(_flatten(arr), host_io) for name, arr in arrays.items()}
    return AttentionInputs(flat["Q"], flat["K1"], flat["K2"], flat["V1"], flat["V2"], heads, scale, mask,
                           device, host_io, logits)


def _flatten(arr):
    """(..., rows, cols) -> (B, rows, cols), C-contiguous (a view where possible)."""
    shape = tuple(arr.shape)
    flat = arr.reshape(int(np.prod(shape[:-2], dtype=np.int64)), *shape[-2:])
    return np.ascontiguousarray(flat) if isinstance(flat, np.ndarray) else flat


def check_upstream(dO, inputs: AttentionInputs):
    """Validate the upstream gradient ``dO`` against the forward inputs; return it batch-flattened
    on the forward's compute device. ``dO`` must sit where the forward's inputs were passed
    (host or GPU)."""
    ops = inputs.ops
    arr = ops.check_upstream(dO, inputs.dtype, inputs.host_io)
    n, dv = inputs.Q.shape[1], inputs.V1.shape[2]
    expected = inputs.batch_shape + (n, dv)
    if tuple(arr.shape) != expected:
        raise ValueError(f"dO must have the output's shape {expected} (..., n, dv), got {arr.shape}")
    return ops.to_compute(_flatten(arr), inputs.host_io)


_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(nbytes) -> str:
    """A byte count for people: ``1 byte``, ``640 bytes``, ``512 KiB``, ``1.5 MiB``, ``4 GiB``
    (binary units, three significant digits, trailing zeros dropped)."""
    nbytes = int(nbytes)
    if abs(nbytes) < 1024:
        return f"{nbytes} byte" + ("" if abs(nbytes) == 1 else "s")
    value, unit = float(nbytes), "bytes"
    for unit in _BYTE_UNITS:
        value /= 1024.0
        if abs(value) < 1023.5 or unit == _BYTE_UNITS[-1]:
            break
    digits = 0 if abs(value) >= 99.95 else 1 if abs(value) >= 9.995 else 2
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}"


def format_byte_pair(nbytes, budget) -> tuple[str, str]:
    """:func:`format_bytes` of an estimate and a budget, exact byte counts where the rounded
    forms would read the same (``48 MiB`` above ``48 MiB`` says nothing)."""
    a, b = format_bytes(nbytes), format_bytes(budget)
    if a == b and int(nbytes) != int(budget):
        a, b = f"{a} ({int(nbytes):,} bytes)", f"{b} ({int(budget):,} bytes)"
    return a, b


def check_memory_budget(value) -> int:
    """``memory_budget`` as an int: a positive whole number of bytes, given as an int or as an
    integral float (``1.5e9``); ``TypeError`` for other types (bool included), ``ValueError`` for
    zero, negative, fractional or non-finite values."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(
            f"memory_budget must be a positive whole number of bytes (an int, or an integral float such as "
            f"1.5e9), got {type(value).__name__} {value!r}"
        )
    if isinstance(value, (numbers.Integral, np.integer)):
        ok = value > 0
    else:
        ok = math.isfinite(float(value)) and value > 0 and float(value).is_integer()
    if not ok:
        raise ValueError(f"memory_budget must be a positive whole number of bytes, got {value!r}")
    return int(value)


def check_memory(nbytes: int, what: str, budget: int, advice: str | None = None) -> None:
    """Raise ``ValueError`` when an allocation of ``nbytes`` would pass ``budget``; call it before
    the first allocation it counts. The message gives both byte counts readably and ``advice``
    (default: how to raise the budget)."""
    if nbytes > budget:
        needed, allowed = format_byte_pair(nbytes, budget)
        raise ValueError(
            f"{what} needs {needed}, above the memory budget of {allowed} "
            + (advice or "(raise tattn_numba.config.MEMORY_BUDGET_BYTES or TATTN_NUMBA_MEMORY_BUDGET)")
        )


_LOGIT_LIMIT_LOG10 = 300.0  # refuse logits or kernel intermediates that may pass 1e300


def _log_sum_of_products(*factors: np.ndarray) -> np.ndarray:
    """ln Σ_l Π_f factors[f][..., l] over the last axis, from non-negative factors, without
    overflow or underflow (a zero product contributes nothing; an all-zero sum gives -inf)."""
    with np.errstate(divide="ignore"):
        logs = sum(np.log(np.asarray(f, dtype=np.float64)) for f in factors)
    top = logs.max(axis=-1, keepdims=True)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (shift + np.log(np.exp(logs - shift).sum(axis=-1, keepdims=True)))[..., 0]


def _format_power(log10_value: float) -> str:
    """``10**log10_value`` as ``3.16e+319``, also beyond float64's range (``0`` for -inf)."""
    if not np.isfinite(log10_value):
        return "0" if log10_value < 0 else "inf"
    exponent = int(np.floor(log10_value))
    mantissa = 10.0 ** (log10_value - exponent)
    if mantissa >= 9.995:  # rounds up to 10.0 in the printed mantissa
        mantissa, exponent = mantissa / 10.0, exponent + 1
    return f"{mantissa:.3g}e{exponent:+03d}"


def check_logit_range(scale: float, q_max: np.ndarray, k1_max: np.ndarray, k2_max: np.ndarray,
                      key_batch: np.ndarray | None = None) -> None:
    """Reject inputs whose logits, or the exact kernels' intermediate products, could overflow
    float64, from the column maxima (B, d) of |Q| and (Bk, d) of |K1|, |K2|; batch entry b
    attends with key entry ``key_batch[b]`` (entry b itself when ``key_batch`` is None).

    The logits obey |logit| <= scale·Σ_l max|Q_l|·max|K1_l|·max|K2_l|; the kernels also form
    scale·Q_i ∘ K1_j1 and scale·Q_i ∘ K2_j2 elementwise, bounded by scale·max|Q_l|·max|K1_l| (and
    K2). Both are evaluated in log space, so a finite true bound is reported finite (Q·K1 ≈ 1e320
    with K2 ≈ 1e-300 has logits ≈ 1e20), and a bound beyond float64 is printed as a power of ten
    instead of ``inf``. Anything above 1e300 raises ``ValueError`` with the bound.
    """
    if key_batch is not None:
        k1_max, k2_max = k1_max[key_batch], k2_max[key_batch]
    log10 = np.log(10.0)
    log_scale = np.log(scale)
    logit = (log_scale + _log_sum_of_products(q_max, k1_max, k2_max)).max() / log10
    if logit > _LOGIT_LIMIT_LOG10:
        raise ValueError(
            "Q, K1, K2 are too large: the logits scale·⟨Q_i, K1_j1 ∘ K2_j2⟩ may overflow float64 "
            f"(bound {_format_power(logit)}, above the limit 1e+300); rescale the inputs or the scale"
        )
    for key, k_max in (("K1", k1_max), ("K2", k2_max)):
        with np.errstate(divide="ignore"):
            partial = (log_scale + np.log(np.asarray(q_max, dtype=np.float64))
                       + np.log(np.asarray(k_max, dtype=np.float64))).max() / log10
        if partial > _LOGIT_LIMIT_LOG10:
            raise ValueError(
                f"Q and {key} are too large together: the exact kernels form scale·Q_i ∘ {key}_j elementwise, "
                f"up to {_format_power(partial)}, above the limit 1e+300 (float64 overflows at 1.8e+308), "
                f"although the logits are bounded by "
                f"{_format_power(logit)}; rebalance the feature columns (multiplying column l of Q or {key} "
                "by c and the same column of another operand by 1/c leaves the logits unchanged)"
            )


def to_caller(x, inputs: AttentionInputs):
    """A result where the caller's inputs were (copied back to the host when the caller passed
    host arrays to a GPU computation, as it is otherwise)."""
    return inputs.ops.to_caller(x, inputs.host_io)


def cast_result(x, inputs: AttentionInputs, name: str, batch_shape: tuple):
    """Cast a batch-flattened result to the input dtype, check it is finite there, and return it
    with leading dimensions ``batch_shape`` where the caller's inputs were (host, or GPU for GPU
    inputs).

    Inputs are finite, but a result can still leave the dtype's range (value products above
    float32's 3.4e38, say). That is reported instead of returning Inf or NaN.
    """
    dtype = inputs.dtype
    out, finite = inputs.ops.cast_finite(x, dtype)
    if not finite:
        raise ValueError(
            f"the result {name} overflows {np.dtype(dtype).name} although the inputs are finite; "
            "rescale the inputs" + (" (or use float64)" if np.dtype(dtype) == np.float32 else "")
        )
    out = to_caller(out, inputs)
    return out.reshape(tuple(batch_shape) + tuple(out.shape[1:]))
