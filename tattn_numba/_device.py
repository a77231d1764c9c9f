"""The CUDA device's array operations (:class:`CudaArrays`, what :func:`tattn_numba._registry.array_ops`
returns for ``device="cuda"``) and the GPU helpers behind them: transfers, finiteness checks,
column extrema, dtype casts and input fingerprints, each a small kernel over a device array.

Imported only once a CUDA request has passed :func:`tattn_numba._cuda.require`, so the kernels
below are compiled lazily and only on machines that use them. Reductions give every thread a
private partial result and combine those with one atomic per block, so their cost is one read
of the array.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _cuda, config
from ._validation import as_float_array, check_dtype_and_size

cuda = _cuda.require()

__all__ = ["to_device", "to_host", "device_empty", "device_full", "device_zeros", "launch", "all_finite",
           "column_extrema", "cast", "fingerprint", "row_dots", "take_batches", "sum_batches", "right_multiply",
           "CudaArrays", "OPS"]


def _blocks(count: int, per_thread: int = 1) -> int:
    """Blocks of ``config.CUDA_THREADS_PER_BLOCK`` threads covering ``count`` items, capped so
    that a grid-stride loop takes over for very large arrays."""
    threads = config.CUDA_THREADS_PER_BLOCK
    return max(1, min(4096, -(-count // (threads * per_thread))))


def launch(kernel, count: int, *args, per_thread: int = 1) -> None:
    """Run ``kernel(*args)`` on enough blocks for ``count`` items (``per_thread`` each); the
    kernel walks its items with a grid-stride loop, so any grid size is correct."""
    kernel[_blocks(count, per_thread), config.CUDA_THREADS_PER_BLOCK](*args)


def to_device(x: np.ndarray):
    """Copy a host array to the GPU (an explicit, counted transfer)."""
    return cuda.to_device(np.ascontiguousarray(x))


def to_host(x) -> np.ndarray:
    """Copy a device array back to the host."""
    return x.copy_to_host()


def device_empty(shape, dtype):
    """An uninitialised device array."""
    return cuda.device_array(shape, dtype=dtype)


@cuda.jit
def _fill_kernel(flat, value):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, flat.shape[0], stride):
        flat[k] = value


def device_full(shape, value: float, dtype=np.float64):
    """A device array filled with ``value`` on the GPU (no host transfer)."""
    out = cuda.device_array(shape, dtype=dtype)
    size = int(np.prod(shape, dtype=np.int64))
    if size:
        launch(_fill_kernel, size, out.reshape(size), value, per_thread=4)
    return out


def device_zeros(shape, dtype=np.float64):
    """A zero-filled device array, filled on the GPU (no host transfer)."""
    return device_full(shape, 0.0, dtype)


@cuda.jit
def _count_non_finite(flat, count):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    bad = 0
    for k in range(start, flat.shape[0], stride):
        x = flat[k]
        if math.isnan(x) or math.isinf(x):
            bad += 1
    if bad:
        cuda.atomic.add(count, 0, bad)


def all_finite(x) -> bool:
    """Whether every entry of the contiguous device array ``x`` is finite."""
    flat = x.reshape(x.size)
    count = cuda.to_device(np.zeros(1, dtype=np.int64))
    launch(_count_non_finite, x.size, flat, count, per_thread=4)
    return int(count.copy_to_host()[0]) == 0


@cuda.jit
def _column_extrema_kernel(X, lo, hi):
    """Block row ``blockIdx.y`` = (b, l); threads stride over the rows and meet by atomics."""
    B, n, d = X.shape
    b = cuda.blockIdx.y // d
    l = cuda.blockIdx.y - b * d
    start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    if start < n:
        low = X[b, start, l]
        high = low
        for j in range(start + stride, n, stride):
            x = X[b, j, l]
            low = min(low, x)
            high = max(high, x)
        cuda.atomic.min(lo, (b, l), low)
        cuda.atomic.max(hi, (b, l), high)


def column_extrema(X) -> tuple[np.ndarray, np.ndarray]:
    """Column minima and maxima (B, d) on the host of the device array X (B, n, d); finite X."""
    B, n, d = X.shape
    lo = cuda.to_device(np.full((B, d), np.inf, dtype=X.dtype))
    hi = cuda.to_device(np.full((B, d), -np.inf, dtype=X.dtype))
    grid = (max(1, min(64, -(-n // config.CUDA_THREADS_PER_BLOCK))), B * d)
    _column_extrema_kernel[grid, config.CUDA_THREADS_PER_BLOCK](X, lo, hi)
    return lo.copy_to_host().astype(np.float64), hi.copy_to_host().astype(np.float64)


@cuda.jit
def _cast_kernel(src, dst):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, src.shape[0], stride):
        dst[k] = src[k]


def cast(x, dtype):
    """``x`` converted to ``dtype`` on the device (``x`` itself when it already has it)."""
    dtype = np.dtype(dtype)
    if x.dtype == dtype:
        return x
    out = cuda.device_array(x.shape, dtype=dtype)
    launch(_cast_kernel, x.size, x.reshape(x.size), out.reshape(x.size), per_thread=4)
    return out


@cuda.jit
def _row_dots_kernel(X, Y, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    B, n, width = X.shape
    for task in range(start, B * n, stride):
        b = task // n
        i = task - b * n
        total = 0.0
        for m in range(width):
            total += float(X[b, i, m]) * float(Y[b, i, m])
        out[b, i] = total


def row_dots(X, Y):
    """``Σ_m X[b, i, m]·Y[b, i, m]`` (B, n), float64 on the device, for device arrays of one
    shape (B, n, width) in any float dtypes: δ = rowsum(dO ∘ O) of the backward passes."""
    B, n, _ = X.shape
    out = cuda.device_array((B, n), dtype=np.float64)
    launch(_row_dots_kernel, B * n, X, Y, out)
    return out


@cuda.jit(device=True)
def _unravel(k, rows, cols):
    """(b, r, c) of the flat index ``k`` of a C-ordered (·, rows, cols) array."""
    b = k // (rows * cols)
    rest = k - b * rows * cols
    r = rest // cols
    return b, r, rest - r * cols


@cuda.jit
def _take_batches_kernel(X, index, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    B, rows, cols = out.shape
    for k in range(start, B * rows * cols, stride):
        b, r, c = _unravel(k, rows, cols)
        out[b, r, c] = X[index[b], r, c]


def take_batches(X, index: np.ndarray):
    """``X[index]`` for a device array X (Bx, rows, cols) and a host int64 index (B,): a new
    device array (B, rows, cols)."""
    out = cuda.device_array((len(index),) + tuple(X.shape[1:]), dtype=X.dtype)
    launch(_take_batches_kernel, out.size, X, cuda.to_device(index), out, per_thread=4)
    return out


@cuda.jit
def _sum_batches_kernel(X, index, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    B, rows, cols = X.shape
    for k in range(start, B * rows * cols, stride):
        b, r, c = _unravel(k, rows, cols)
        cuda.atomic.add(out, (index[b], r, c), X[b, r, c])


def sum_batches(X, index: np.ndarray, count: int):
    """``out[c] = Σ_{b: index[b] = c} X[b]``, float64 device array (count, rows, cols), for a
    float64 device array X (B, rows, cols) (atomics: the order of the additions may vary)."""
    out = device_zeros((int(count),) + tuple(X.shape[1:]))
    launch(_sum_batches_kernel, X.size, X, cuda.to_device(index), out, per_thread=4)
    return out


@cuda.jit
def _right_multiply_kernel(X, M, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    B, rows, width = X.shape
    cols = M.shape[1]
    for k in range(start, B * rows * cols, stride):
        b, r, c = _unravel(k, rows, cols)
        total = 0.0
        for l in range(width):
            total += float(X[b, r, l]) * M[l, c]
        out[b, r, c] = total


def right_multiply(X, M: np.ndarray):
    """``X @ M`` for a device array X (B, rows, width) and a small host matrix M (width, cols),
    in X's dtype (sums in float64)."""
    out = cuda.device_array(tuple(X.shape[:2]) + (M.shape[1],), dtype=X.dtype)
    launch(_right_multiply_kernel, out.size, X, cuda.to_device(np.ascontiguousarray(M, dtype=np.float64)), out)
    return out


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@cuda.jit
def _fingerprint_kernel(words, total):
    """Σ_k mix(words[k] + k·golden) modulo 2^64: order-free, so one atomic per thread suffices."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    acc = np.uint64(0)
    for k in range(start, words.shape[0], stride):
        h = (np.uint64(words[k]) + np.uint64(k) * _GOLDEN) * _MIX
        acc += h ^ (h >> np.uint64(31))
    cuda.atomic.add(total, 0, acc)


def fingerprint(x) -> int:
    """A 64-bit hash of the bits of the contiguous device array ``x`` (one pass, no copy)."""
    words = x.reshape(x.size).view(np.uint32)
    total = cuda.to_device(np.zeros(1, dtype=np.uint64))
    with warnings.catch_warnings():
        # The hash wraps modulo 2^64 on purpose; the simulator's NumPy scalars warn about it.
        warnings.simplefilter("ignore", RuntimeWarning)
        launch(_fingerprint_kernel, words.shape[0], words, total, per_thread=4)
    return int(total.copy_to_host()[0])


class CudaArrays:
    """Operations of the public layer for ``device="cuda"`` (the GPU twin of
    :class:`tattn_numba._host.HostArrays`).

    The operands are either all host arrays (validated on the host, then copied to the GPU,
    results copied back: ``host_io=True``) or all GPU arrays with ``__cuda_array_interface__``
    (used in place, results stay on the GPU: ``host_io=False``).
    """

    def check_operands(self, operands: dict) -> tuple[dict, bool]:
        """Validated operands (host ndarrays or device arrays) and whether they are on the
        host; a mixture of host and GPU arrays raises ``ValueError``."""
        on_gpu = [name for name, x in operands.items() if _cuda.is_device_array(x)]
        if on_gpu and len(on_gpu) < len(operands):
            on_host = [name for name in operands if name not in on_gpu]
            raise ValueError(
                f"{', '.join(on_gpu)} {'is a GPU array' if len(on_gpu) == 1 else 'are GPU arrays'} but "
                f"{', '.join(on_host)} {'is a host array' if len(on_host) == 1 else 'are host arrays'}; pass "
                "all of them on one side (numba.cuda.to_device moves host arrays explicitly)"
            )
        check = _device_float_array if on_gpu else as_float_array
        arrays, dtype = {}, None
        for name, x in operands.items():
            arrays[name] = check(x, name, dtype)
            dtype = arrays[name].dtype
        return arrays, not on_gpu

    def check_upstream(self, dO, dtype, host_io: bool):
        """The upstream gradient, validated on the side where the forward's inputs were."""
        if _cuda.is_device_array(dO) == host_io:
            if host_io:
                raise ValueError("dO is a GPU array but the forward inputs were host arrays; pass dO on the host too")
            raise ValueError(
                "dO is a host array but the forward inputs were GPU arrays; move it explicitly "
                "(numba.cuda.to_device) or pass host inputs to the forward"
            )
        return (as_float_array if host_io else _device_float_array)(dO, "dO", dtype)

    def to_compute(self, flat, host_io: bool):
        """A validated, batch-flattened array on the GPU (host arrays are copied there)."""
        return to_device(flat) if host_io else flat

    def to_caller(self, x, host_io: bool):
        """A result copied back to the host when the caller passed host arrays."""
        return x.copy_to_host() if host_io else x

    def cast_finite(self, x, dtype) -> tuple:
        """``x`` cast to ``dtype`` on the GPU and whether it is finite there."""
        out = cast(x, dtype)
        return out, all_finite(out)

    def fingerprints(self, arrays, host_io: bool) -> tuple[int, ...]:
        """64-bit GPU hashes of GPU operands; nothing for host inputs (their GPU copies are
        private, the caller cannot change them)."""
        return () if host_io else tuple(fingerprint(x) for x in arrays)

    def take_batches(self, x, index: np.ndarray):
        """``x[index]`` along the batch axis (a new device array)."""
        return take_batches(x, index)

    def sum_batches(self, x, index: np.ndarray, count: int):
        """``out[c] = Σ_{b: index[b] = c} x[b]`` along the batch axis, float64."""
        return sum_batches(cast(x, np.float64), index, count)

    def right_multiply(self, x, matrix: np.ndarray):
        """``x @ matrix`` over the last axis, in x's dtype."""
        return right_multiply(x, matrix)

    def private(self, x, internal, host_io: bool):
        """``x``, or a GPU copy of it when it is ``internal`` itself (a result for GPU inputs
        that needed no cast); host copies never alias."""
        if host_io or internal.dtype != x.dtype:
            return x
        out = device_empty(tuple(x.shape), x.dtype)
        out.copy_to_device(x)
        return out


def _device_float_array(x, name: str, dtype=None):
    """The GPU array ``x`` as a finite, C-contiguous float32/float64 numba device array (a
    view, no copy), or an error naming ``name``."""
    arr = _cuda.as_device_array(x)
    check_dtype_and_size(arr, name, dtype)
    if not arr.is_c_contiguous():
        raise ValueError(
            f"{name} is a non-contiguous GPU array (strides {arr.strides}); pass a C-contiguous one "
            "(e.g. .contiguous() in PyTorch, cupy.ascontiguousarray)"
        )
    if not all_finite(arr):
        raise ValueError(f"{name} contains NaN or Inf; all entries must be finite")
    return arr


OPS = CudaArrays()
