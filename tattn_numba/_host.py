"""Array operations of the public layer for ``device="cpu"``: the host twin of
:class:`tattn_numba._device.CudaArrays`.

The public layer never asks which device it runs on; it calls the operations of the object
:func:`tattn_numba._registry.array_ops` returns (as TensorLy calls its backend). Each device
implements the same operations: validate the operands, move a validated array to the
compute device, return a result to the caller, cast with a finiteness check, fingerprint the
caller's arrays, detach a result from internal memory, and the three batch/feature maps of
grouped heads and logit forms (gather batch entries, sum them back, multiply by a small matrix).
"""

from __future__ import annotations

import zlib

import numpy as np

from ._validation import as_float_array


class HostArrays:
    """NumPy arrays computed on the host (``device="cpu"``); ``host_io`` is always True."""

    def check_operands(self, operands: dict) -> tuple[dict, bool]:
        """Each operand as a finite float32/float64 ndarray of one dtype (see
        :func:`tattn_numba._validation.as_float_array`), and ``host_io=True``."""
        arrays, dtype = {}, None
        for name, x in operands.items():
            arrays[name] = as_float_array(x, name, dtype)
            dtype = arrays[name].dtype
        return arrays, True

    def check_upstream(self, dO, dtype, host_io: bool) -> np.ndarray:
        """The upstream gradient as a finite ndarray of ``dtype``."""
        return as_float_array(dO, "dO", dtype=dtype)

    def to_compute(self, flat: np.ndarray, host_io: bool) -> np.ndarray:
        """A validated, batch-flattened array where the kernels read it: here, itself."""
        return flat

    def to_caller(self, x, host_io: bool):
        """A result where the caller's inputs were: here, itself."""
        return x

    def cast_finite(self, x: np.ndarray, dtype) -> tuple[np.ndarray, bool]:
        """``x`` in ``dtype`` (no copy when it already has it) and whether it is finite there."""
        with np.errstate(over="ignore", invalid="ignore"):
            out = x.astype(dtype, copy=False)
        return out, bool(np.isfinite(out).all())

    def fingerprints(self, arrays, host_io: bool) -> tuple[int, ...]:
        """CRC-32 of each C-contiguous array's bytes."""
        return tuple(zlib.crc32(memoryview(x).cast("B")) for x in arrays)

    def take_batches(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``x[index]`` along the batch axis (a new array)."""
        return x[index]

    def sum_batches(self, x: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
        """``out[c] = Σ_{b: index[b] = c} x[b]`` along the batch axis, float64."""
        out = np.zeros((int(count),) + x.shape[1:])
        np.add.at(out, index, x)
        return out

    def right_multiply(self, x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """``x @ matrix`` over the last axis, in x's dtype."""
        return x @ matrix.astype(x.dtype, copy=False)

    def private(self, x, internal, host_io: bool):
        """``x``, or a copy of it when it shares memory with ``internal`` (an array the
        backward reads)."""
        return x.copy() if np.shares_memory(x, internal) else x


OPS = HostArrays()
