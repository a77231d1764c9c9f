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
QUERY_TILE : int
    Number of query rows a CPU task processes together (shares K2/V2 tiles in L1).
KEY_TILE : int
    Number of K2 rows per logit tile; a tile of K2^T and V2^T (2·KEY_TILE·d·8 bytes)
    should fit in the L1/L2 cache.
MEMORY_BUDGET_BYTES : int
    Largest extra allocation a call may make (``TATTN_NUMBA_MEMORY_BUDGET``, bytes,
    default 4 GiB). A request above it raises ``ValueError`` before allocating.
"""

from __future__ import annotations

import os

__all__ = ["FASTMATH", "CACHE", "QUERY_TILE", "KEY_TILE", "MEMORY_BUDGET_BYTES"]


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


FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
CACHE = os.environ.get("TATTN_NUMBA_CACHE", "1") != "0"
QUERY_TILE = _env_int("TATTN_NUMBA_QUERY_TILE", 8)
KEY_TILE = _env_int("TATTN_NUMBA_KEY_TILE", 256)
MEMORY_BUDGET_BYTES = _env_int("TATTN_NUMBA_MEMORY_BUDGET", 4 * 2**30)
