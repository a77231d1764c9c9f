"""The exact chain (method="exact"): loss, output, dLoss/dX and dLoss/dY without n×n² matrices.

Row i of an n×n² matrix is read as an n×n matrix (rows j1, columns j2), so every product with
A2 ⊗ A3 or A4 ⊗ A5 becomes a two-sided product (identity I5 of SPEC §4; the derivation is in
docs/math/training_problem.rst). Per chunk of query rows, with T_i = (A1 X)_i reshaped d×d:

    logits_i = A2 T_i A3^T / d,   W_i = A4^T f_i A5,   (f h)_i = vec(W_i)^T Y,   c_i = (f h)_i − E_i
    q_i = A4 reshape(Y c_i) A5^T,   p_i = f_i ∘ (q_i − r_i),   dX += (1/d) A1_chunk^T [vec(A2^T p_i A3)]_i
    dY += [vec(W_i)]_i^T c_chunk

Only the chunk's (rows × n × n) tensors are alive at a time. Time Θ(n³d + nd³) (≈ 2n³d flops for
the forward, ≈ 4n³d with dX, plus n³ exponentials), memory O(chunk·n² + nd + d³). All float64,
NumPy/BLAS matmuls and ufuncs.

Settings: ``config.PAPER_CHUNK_BYTES`` and ``config.PAPER_CHUNK_ROWS``, read at every call
(tests patch them).
"""

from __future__ import annotations

import numpy as np

from .. import config
from .._validation import check_memory
from ._common import Terms

#: Number of (rows × n × n) float64 tensors alive at once inside a chunk (logits/f, q/p and the
#: temporaries of the two-sided products), used to size chunks and to check the memory budget.
_LIVE_NN_TENSORS = 3


def sandwich(B: np.ndarray, T: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Batched ``B @ T[i] @ C^T``: T (k, d, d) → (k, n, n); the mode product T ×_1 B ×_2 C.

    Equals ``tensorly.tenalg.multi_mode_dot(T, [B, C], modes=[1, 2])``; cost 2·k·(n²d + nd²).
    """
    return np.matmul(B, np.matmul(T, C.T))


def reduce(B: np.ndarray, F: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Batched ``B^T @ F[i] @ C``: F (k, n, n) → (k, d, d); the mode product F ×_1 B^T ×_2 C^T.

    ``k, n = F.shape[:2]``; F @ C is one (k·n × n)·(n × d) GEMM. Cost 2·k·(n²d + nd²).
    """
    k, n, _ = F.shape
    FC = (F.reshape(k * n, n) @ C).reshape(k, n, -1)
    return np.matmul(B.T, FC)


def _check_chunk_rows(chunk_rows) -> int | None:
    if chunk_rows is None:
        return None
    if isinstance(chunk_rows, (bool, np.bool_)) or not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"config.PAPER_CHUNK_ROWS must be a positive integer or None, got {chunk_rows!r}")
    return int(chunk_rows)


def chunk_size(n: int, d: int) -> int:
    """Query rows per chunk from the module settings; ``ValueError`` if one row exceeds the memory budget."""
    chunk_rows = _check_chunk_rows(config.PAPER_CHUNK_ROWS)
    per_row = _LIVE_NN_TENSORS * n * n * 8 + 4 * d * (d + n) * 8
    check_memory(per_row, f"one query row of the exact paper loss (n={n}, d={d})", config.MEMORY_BUDGET_BYTES)
    most = max(1, config.MEMORY_BUDGET_BYTES // per_row)  # never above the hard budget
    if chunk_rows is not None:
        return int(min(chunk_rows, n, most))
    return int(max(1, min(n, most, config.PAPER_CHUNK_BYTES // per_row)))


def exact_terms(A, E, X, Y, *, want_out: bool, want_dX: bool, want_dY: bool) -> Terms:
    """Driver of the exact method: one pass over query-row chunks (float64 in, float64 out).

    ``A`` is the list [A1..A5] of (n, d) arrays; ``E`` (n, d) or None (then the loss is not
    computed and c = f h). Returns the loss, the output f h (n, d), dLoss/dX (d, d²) and
    dLoss/dY (d², d) as requested. Memory O(chunk·(n² + d²) + n·d + d³); time Θ(n³d + nd³).
    """
    A1, A2, A3, A4, A5 = A
    n, d = A1.shape
    inv_d = 1.0 / d
    rows = chunk_size(n, d)
    total = 0.0
    out = np.empty((n, d)) if want_out else None
    dX = np.zeros((d, d * d)) if want_dX else None
    dY = np.zeros((d * d, d)) if want_dY else None
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        k = stop - start
        # logits L[i, j1, j2] = (1/d) Σ_{b,c} T[i,b,c] A2[j1,b] A3[j2,c], T_i = reshape((A1 X)_i)
        T = (A1[start:stop] @ X) * inv_d
        e = sandwich(A2, T.reshape(k, d, d), A3)
        # stable row softmax over the n² pairs, normalisation deferred: f_i = e_i / s_i
        e -= e.max(axis=(1, 2), keepdims=True)
        np.exp(e, out=e)
        inv_s = 1.0 / e.sum(axis=(1, 2))
        # W_i = A4^T f_i A5, so (f h)_i = vec(W_i)^T Y
        Wf = reduce(A4, e, A5).reshape(k, d * d)
        Wf *= inv_s[:, None]
        fh = Wf @ Y
        if want_out:
            out[start:stop] = fh
        c = fh - E[start:stop] if E is not None else fh
        total += 0.5 * float(np.sum(c * c))
        if want_dY:
            dY += Wf.T @ c
        if want_dX:
            r = np.einsum("im,im->i", c, fh)
            # q_i = Σ_m c[i,m] h_m = A4 Z_i A5^T with Z_i = reshape(Y c_i)
            q = sandwich(A4, (c @ Y.T).reshape(k, d, d), A5)
            q -= r[:, None, None]
            q *= e  # p_i = s_i · f_i ∘ (q_i − r_i)
            del e
            M = reduce(A2, q, A3).reshape(k, d * d)  # s_i · A2^T p_i A3
            del q
            M *= inv_s[:, None]
            dX += A1[start:stop].T @ M
    if want_dX:
        dX *= inv_d
    return Terms(total, out, dX, dY)
