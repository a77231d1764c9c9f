"""Shared-memory tiled matrix product on the GPU, the low-rank contractions of the CUDA surrogate.

``C = op(A)·op(B)`` or ``C += op(A)·op(B)``, with ``op`` the identity or the transpose, for
float64 device matrices of any shape. A block of ``tile × tile`` threads
(``config.CUDA_GEMM_TILE``) computes one tile of C: it walks the shared dimension a tile at a
time, staging one tile of op(A) and one of op(B) in shared memory, where every thread reads
``tile`` entries of each for one global read. Loads are arranged so that consecutive threads read
consecutive addresses whichever operand is transposed. Each entry of C is a sum in a fixed order,
so the result is deterministic. Time O(M·N·K), global reads O(M·N·K / tile).

Imported only once a CUDA request has passed :func:`tattn_numba._cuda.require`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import config
from .._cuda import require

cuda = require()

__all__ = ["gemm"]


@cuda.jit(device=True)
def _stage_tile(staged, matrix, transposed, row0, col0, rows, cols):
    """Load this thread's entry of the shared tile ``staged[i, j] = op(matrix)[row0 + i, col0 + j]``.

    ``op(matrix)`` is ``matrix`` (rows, cols), or its transpose with ``transposed`` (matrix
    stored (cols, rows)); entries outside it are staged as 0. ``staged`` is a shared
    (tile, tile + 1) array. Thread (y, x) loads
    (i, j) = (y, x), or (x, y) when transposed, so that consecutive threads x read consecutive
    addresses of ``matrix`` either way. The caller synchronises the block before reading ``staged``.
    """
    if transposed:
        i, j = cuda.threadIdx.x, cuda.threadIdx.y
        staged[i, j] = matrix[col0 + j, row0 + i] if row0 + i < rows and col0 + j < cols else 0.0
    else:
        i, j = cuda.threadIdx.y, cuda.threadIdx.x
        staged[i, j] = matrix[row0 + i, col0 + j] if row0 + i < rows and col0 + j < cols else 0.0


@lru_cache(maxsize=8)
def _tiled_product(tile: int):
    """The product kernel for ``tile × tile`` blocks (the tile is a compile-time constant of the
    shared arrays, so there is one kernel per tile size)."""
    padded = tile + 1

    @cuda.jit
    def _product(A, B, C, transpose_a, transpose_b, accumulate):
        """One ``tile × tile`` tile of ``C (M, N) [+]= op(A) (M, K) · op(B) (K, N)``.

        ``A`` is stored (M, K), or (K, M) with ``transpose_a``; ``B`` is (K, N), or (N, K) with
        ``transpose_b``. Thread (y, x) of block (bx, by) owns C[by·tile + y, bx·tile + x]. The
        shared tiles have one padding column against bank conflicts on transposed loads.
        """
        op_a = cuda.shared.array((tile, padded), np.float64)
        op_b = cuda.shared.array((tile, padded), np.float64)
        x = cuda.threadIdx.x
        y = cuda.threadIdx.y
        row0 = cuda.blockIdx.y * tile
        col0 = cuda.blockIdx.x * tile
        M, N = C.shape
        K = A.shape[0] if transpose_a else A.shape[1]
        total = 0.0
        for k0 in range(0, K, tile):
            _stage_tile(op_a, A, transpose_a, row0, k0, M, K)  # op_a[i, k] = op(A)[row0 + i, k0 + k]
            _stage_tile(op_b, B, transpose_b, k0, col0, K, N)  # op_b[k, j] = op(B)[k0 + k, col0 + j]
            cuda.syncthreads()
            for kk in range(tile):
                total += op_a[y, kk] * op_b[kk, x]
            cuda.syncthreads()
        if row0 + y < M and col0 + x < N:
            if accumulate:
                C[row0 + y, col0 + x] += total
            else:
                C[row0 + y, col0 + x] = total

    return _product


def gemm(A, B, C, *, transpose_a: bool = False, transpose_b: bool = False, accumulate: bool = False):
    """``C = op(A)·op(B)`` (or ``C += …`` with ``accumulate``) on the GPU; returns ``C``.

    Parameters
    ----------
    A : device array, float64, shape (M, K), or (K, M) with ``transpose_a``
    B : device array, float64, shape (K, N), or (N, K) with ``transpose_b``
    C : device array, float64, shape (M, N)
        Written in place (any strides; views of larger arrays are fine).
    transpose_a, transpose_b, accumulate : bool

    Notes
    -----
    Blocks of ``config.CUDA_GEMM_TILE``² threads (the tile must be at most 32); time O(M·N·K).
    """
    tile = config.CUDA_GEMM_TILE
    if not 1 <= tile <= 32:
        raise ValueError(f"config.CUDA_GEMM_TILE must be between 1 and 32 (a block has tile² threads), got {tile}")
    M, N = C.shape
    K = A.shape[0] if transpose_a else A.shape[1]
    a_rows = A.shape[1] if transpose_a else A.shape[0]
    b_shape = (N, K) if transpose_b else (K, N)
    if a_rows != M or tuple(B.shape) != b_shape:
        raise ValueError(
            f"gemm shapes do not match: A {tuple(A.shape)} (transpose_a={transpose_a}), "
            f"B {tuple(B.shape)} (transpose_b={transpose_b}), C {tuple(C.shape)}"
        )
    grid = (-(-N // tile), -(-M // tile))
    _tiled_product(tile)[grid, (tile, tile)](A, B, C, transpose_a, transpose_b, accumulate)
    return C
