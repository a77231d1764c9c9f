"""Settings read once at import time.

Every tunable of the toolkit lives here so that tests and users can patch one place.
Values come from environment variables where it makes sense to set them before import.

Attributes
----------
FASTMATH : set of str
    LLVM fast-math flags used by every CPU kernel. Deliberately *not* ``fastmath=True``:
    that enables ``nnan``/``ninf``, under which ``np.isnan`` silently returns False.
    ``reassoc`` lets reductions vectorise; ``contract`` allows FMA.
CACHE : bool
    Whether jitted kernels are cached on disk (``TATTN_NUMBA_CACHE=0`` turns it off).
    Numba places the cache under ``NUMBA_CACHE_DIR`` when that is set.
KEY_TILE_1, KEY_TILE_2 : int
    Rows of K1 and of K2 per logit tile of the exact CPU kernels: a query row's logits are
    computed KEY_TILE_2 × KEY_TILE_1 at a time (8·KEY_TILE_1·KEY_TILE_2 bytes, meant to stay
    in the L1/L2 cache); float32 tiles take 2·KEY_TILE_1 rows of K1, the same bytes.
QUERY_HEADS_PER_TASK : int
    Query heads of one group (grouped key/value heads) that an exact CPU task computes together,
    so that each key block it reads serves all of them while it is in the cache
    (``TATTN_NUMBA_QUERY_HEADS_PER_TASK``, default 4; fewer when the group is smaller or the
    tasks would be too few to keep the threads busy).
POLY_CHUNK_ROWS : int
    Largest number of rows of a feature matrix (U1, U2 or U3) the polynomial surrogate
    materialises at once (``TATTN_NUMBA_POLY_CHUNK_ROWS``); fewer when the memory budget asks.
FEATURE_BLOCK_ROWS : int
    Rows per parallel block of the surrogate's feature kernels (1024): the previous degree's
    columns of a block, C(d+g-2, g-1)·FEATURE_BLOCK_ROWS·8 bytes, stay in a core's L2 cache
    (measured in docs/benchmarks.md). Compiled into the kernels: set it before import.
PAPER_CHUNK_BYTES : int
    Target size of one chunk's n×n work tensors, all together, in the exact chain of
    :mod:`tattn_numba.paper` (4 MiB, one core's L2 on the reference machine).
PAPER_CHUNK_ROWS : int or None
    None (size the paper's exact chunks from PAPER_CHUNK_BYTES) or rows per chunk, still capped
    by n and the memory budget; lets tests run many small chunks on tiny problems.
OMP_WAIT_POLICY
    Set to ``PASSIVE`` at import unless the environment already sets it. The surrogate
    alternates short Numba parallel loops (feature maps) with OpenBLAS matrix products;
    with OpenMP's default active waiting, idle threads of one pool spin on the 2 cores the other
    pool needs (measured: surrogate forward+backward at n = 65536 1.36 s -> 0.74 s). It has to
    be set before the first Numba parallel call in the process; the exact kernels are unaffected.
SERIAL_BELOW_FLOPS : int
    Calls whose work is below this many floating-point operations run their Numba loops on one
    thread (``TATTN_NUMBA_SERIAL_BELOW_FLOPS``, default 3·10^7 ≈ 5 ms of one core): waking the
    pool costs more than it saves there, most of all next to another OpenMP runtime (PyTorch).
MEMORY_BUDGET_BYTES : int
    Largest extra allocation a call may make (``TATTN_NUMBA_MEMORY_BUDGET``, bytes,
    default 4 GiB). A request above it raises ``ValueError`` before allocating.
CUDA_THREADS_PER_BLOCK : int
    Threads per block of every CUDA kernel (``TATTN_NUMBA_CUDA_THREADS_PER_BLOCK``, a power of
    two, default 128). The tests set it to 8 under the simulator so that multi-block grids and
    in-block reductions run on tiny sizes.
CUDA_QUERY_TILE : int
    Query rows per block of the exact CUDA kernels (``TATTN_NUMBA_CUDA_QUERY_TILE``, a power of
    two dividing CUDA_THREADS_PER_BLOCK, default 4): each row gets
    CUDA_THREADS_PER_BLOCK / CUDA_QUERY_TILE threads that split its first key axis.
CUDA_KEY_TILE : int
    Rows of the inner key operand (K2 and V2 in the forward) a block stages in shared memory at
    a time (``TATTN_NUMBA_CUDA_KEY_TILE``, default 64).
CUDA_TILE_BYTES : int
    Shared-memory bytes the exact CUDA kernels' staged key and value tiles may take (32 KiB of
    the 48 KiB a block gets without opting in to more).
CUDA_GEMM_TILE : int
    Edge of the square tiles of the polynomial surrogate's CUDA matrix products
    (``TATTN_NUMBA_CUDA_GEMM_TILE``, at most 32, default 16): a block of CUDA_GEMM_TILE²
    threads computes one tile of the product, staging tiles of both operands in shared memory.
"""

from __future__ import annotations

import os

__all__ = ["FASTMATH", "CACHE", "KEY_TILE_1", "KEY_TILE_2", "QUERY_HEADS_PER_TASK", "POLY_CHUNK_ROWS", "FEATURE_BLOCK_ROWS",
           "PAPER_CHUNK_BYTES", "PAPER_CHUNK_ROWS", "SERIAL_BELOW_FLOPS", "MEMORY_BUDGET_BYTES",
           "CUDA_THREADS_PER_BLOCK", "CUDA_QUERY_TILE", "CUDA_KEY_TILE", "CUDA_TILE_BYTES", "CUDA_GEMM_TILE"]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"environment variable {name} must be positive, got {value}")
    return value


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CACHE = os.environ.get("TATTN_NUMBA_CACHE", "1") != "0"
KEY_TILE_1 = _env_int("TATTN_NUMBA_KEY_TILE_1", 128)
KEY_TILE_2 = _env_int("TATTN_NUMBA_KEY_TILE_2", 32)
QUERY_HEADS_PER_TASK = _env_int("TATTN_NUMBA_QUERY_HEADS_PER_TASK", 4)
SERIAL_BELOW_FLOPS = _env_int("TATTN_NUMBA_SERIAL_BELOW_FLOPS", 30_000_000)
POLY_CHUNK_ROWS = _env_int("TATTN_NUMBA_POLY_CHUNK_ROWS", 8192)
FEATURE_BLOCK_ROWS = 1024
PAPER_CHUNK_BYTES = 4 * 2**20
PAPER_CHUNK_ROWS: int | None = None
MEMORY_BUDGET_BYTES = _env_int("TATTN_NUMBA_MEMORY_BUDGET", 4 * 2**30)
CUDA_THREADS_PER_BLOCK = _env_int("TATTN_NUMBA_CUDA_THREADS_PER_BLOCK", 128)
CUDA_QUERY_TILE = _env_int("TATTN_NUMBA_CUDA_QUERY_TILE", 4)
CUDA_KEY_TILE = _env_int("TATTN_NUMBA_CUDA_KEY_TILE", 64)
CUDA_TILE_BYTES = 32 * 1024
CUDA_GEMM_TILE = _env_int("TATTN_NUMBA_CUDA_GEMM_TILE", 16)
