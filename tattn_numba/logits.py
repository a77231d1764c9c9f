"""Logit forms: which trilinear form of (q, k1, k2) the attention scores are built from.

Two forms are supported (:data:`LOGIT_FORMS`):

``"trilinear"``
    The package's native form, ``logit[i, j1, j2] = s · Σ_l Q[i,l] K1[j1,l] K2[j2,l]``.
``"determinant"``
    Roy et al. 2025 ("Fast and Simplex: 2-Simplicial Attention in Triton", §5 eq. 8):
    ``logit = s · Σ_c det[q_c; k1_c; k2_c]`` over the consecutive 3-coordinate chunks
    ``c = 0, …, d // 3 − 1`` (``det[a; b; c] = a · (b × c)``), plus the ordinary trilinear
    product ``Σ_l q_l k1_l k2_l`` of the remaining ``d mod 3`` coordinates. It is unchanged
    when one rotation ``R ∈ SO(3)`` is applied to every 3-chunk of q, k1 and k2, and changes
    sign (chunk part only) under a reflection.

The determinant is itself a trilinear form: expanding it,
``det[q; a; b] = q0 a1 b2 + q1 a2 b0 + q2 a0 b1 − q0 a2 b1 − q1 a0 b2 − q2 a1 b0``,
i.e. the plain trilinear product of the *lifted* chunks

    Q'  = [ q0,  q1,  q2, −q0, −q1, −q2]
    K1' = [ a1,  a2,  a0,  a2,  a0,  a1]
    K2' = [ b2,  b0,  b1,  b1,  b2,  b0]

So the determinant form runs on the existing kernels unchanged: lift the operands with
:func:`lift` (width ``d' = 6 · (d // 3) + d mod 3``, see :func:`lifted_width`), call
:func:`tattn_numba.attention` / :func:`tattn_numba.attention_grad` on the lifted operands, and
map ``dQ', dK1', dK2'`` back with :func:`pull_back`, the transpose of the lift (each original
coordinate receives the signed sum of the lifted columns it was copied to). ``dV1`` and ``dV2``
need no pull-back. Lifted column ``6c + p`` (``p < 6``) comes from chunk ``c``; the remainder
coordinates ``3 · (d // 3) + r`` follow, copied once with sign ``+``. The minus signs all sit on
Q'.

Shapes: ``(..., rows, d)`` → ``(..., rows, d')`` for :func:`lift` and back for
:func:`pull_back`, any leading dims; each is one product with a (d, d') matrix of
:func:`lift_matrices` (one ±1 per column, so exact), O(rows · d · d'), dtype preserved.
:func:`lift` and :func:`pull_back` take host arrays; the public layer applies the same matrices
on any device through its array operations (``logits=`` of :func:`tattn_numba.attention`).

Notes
-----
* The public entry points apply the form themselves: ``attention(..., logits="determinant")``
  lifts after validation, keeps the default scale at ``1/d`` of the *original* d and pulls the
  gradients back. Calling the kernels on :func:`lift`'s output directly (as in the example) needs
  ``scale=`` explicitly, since ``scale=None`` would mean ``1/d'`` of the lifted width.
* Surrogate. With ``method="poly"`` the surrogate sees the lifted problem: its rank and its radius
  (the operand norms it bounds) are those of width ``d'``. Each chunk coordinate appears twice in
  every lifted operand, so the chunk part's squared row norms double.

Examples
--------
>>> import numpy as np, tattn_numba as ta
>>> from tattn_numba.logits import lift, pull_back
>>> rng = np.random.default_rng(0)
>>> Q, K1, K2, V1, V2, dO = (rng.standard_normal((4, 5)) for _ in range(6))
>>> O = ta.attention(*lift("determinant", Q, K1, K2), V1, V2, scale=1 / 5)
>>> g = ta.attention_grad(*lift("determinant", Q, K1, K2), V1, V2, dO, scale=1 / 5)
>>> dQ, dK1, dK2 = pull_back("determinant", 5, g.dQ, g.dK1, g.dK2)
>>> dQ.shape, g.dV1.shape
((4, 5), (4, 5))
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["LOGIT_FORMS", "check_logits", "lifted_width", "lift_matrices", "lift", "pull_back"]

LOGIT_FORMS = ("trilinear", "determinant")

# One 3-chunk of the determinant lift: source coordinate (within the chunk) of each of the six
# lifted columns, per operand, and the sign carried by Q'.
_CHUNK_Q = np.array([0, 1, 2, 0, 1, 2])
_CHUNK_K1 = np.array([1, 2, 0, 2, 0, 1])
_CHUNK_K2 = np.array([2, 0, 1, 1, 2, 0])
_CHUNK_SIGN = np.array([1, 1, 1, -1, -1, -1], dtype=np.int8)


def check_logits(logits: object) -> str:
    """Return ``logits`` if it names a logit form of :data:`LOGIT_FORMS`.

    Raises
    ------
    TypeError
        ``logits`` is not a ``str``.
    ValueError
        ``logits`` is not one of :data:`LOGIT_FORMS`.
    """
    if not isinstance(logits, str):
        raise TypeError(f"logits must be a str, got {type(logits).__name__}")
    if logits not in LOGIT_FORMS:
        allowed = ", ".join(repr(f) for f in LOGIT_FORMS)
        raise ValueError(f"logits must be one of {allowed}, got {logits!r}")
    return logits


def _check_width(d: object) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise TypeError(f"d must be an int, got {type(d).__name__}")
    if d < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    return int(d)


def lifted_width(form: str, d: int) -> int:
    """Width ``d'`` of the lifted operands: ``d`` for ``"trilinear"``, ``6·(d//3) + d%3`` else."""
    form = check_logits(form)
    d = _check_width(d)
    if form == "trilinear":
        return d
    return 6 * (d // 3) + d % 3


@lru_cache(maxsize=None)
def _tables(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Determinant lift for width ``d``: source index of each lifted column per operand, and Q's signs."""
    chunks, rest = divmod(d, 3)
    base = np.repeat(3 * np.arange(chunks), 6)
    tail = np.arange(3 * chunks, d)
    tables = (
        np.concatenate([base + np.tile(_CHUNK_Q, chunks), tail]),
        np.concatenate([base + np.tile(_CHUNK_K1, chunks), tail]),
        np.concatenate([base + np.tile(_CHUNK_K2, chunks), tail]),
        np.concatenate([np.tile(_CHUNK_SIGN, chunks), np.ones(rest, dtype=np.int8)]),
    )
    for t in tables:
        t.setflags(write=False)
    return tables


@lru_cache(maxsize=None)
def lift_matrices(form: str, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lift as three matrices ``(M_Q, M_K1, M_K2)`` of shape (d, d'), float64, read-only:
    ``Q' = Q @ M_Q`` (and K1, K2 likewise) and the pull-back is ``dQ = dQ' @ M_Q^T``. Each
    column holds one entry ±1, so both products are exact. This is the form the public layer
    applies on any device (:meth:`tattn_numba._host.HostArrays.right_multiply`)."""
    form = check_logits(form)
    d = _check_width(d)
    width = lifted_width(form, d)
    if form == "trilinear":
        tables = (np.arange(d),) * 3 + (np.ones(d, dtype=np.int8),)
    else:
        tables = _tables(d)
    q_idx, k1_idx, k2_idx, sign = tables
    matrices = []
    for idx, sgn in ((q_idx, sign), (k1_idx, np.ones_like(sign)), (k2_idx, np.ones_like(sign))):
        M = np.zeros((d, width))
        M[idx, np.arange(width)] = sgn
        M.setflags(write=False)
        matrices.append(M)
    return tuple(matrices)


def _last_dim(name: str, x: np.ndarray) -> int:
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d array")
    return x.shape[-1]


def lift(form: str, Q, K1, K2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lift ``(Q, K1, K2)`` so that the plain trilinear product of the lifted operands is ``form``.

    Parameters
    ----------
    form : {"trilinear", "determinant"}
    Q, K1, K2 : array_like, shape (..., rows, d)
        Host NumPy arrays (or array_likes); one common last dimension ``d``. Leading dims and
        row counts are not checked here (the attention call checks them).

    Returns
    -------
    Q', K1', K2' : ndarray, shape (..., rows, d')
        ``d' = lifted_width(form, d)``, input dtypes. For ``"trilinear"`` the inputs themselves
        (same objects). The scale is not touched (see the module notes).
    """
    form = check_logits(form)
    if form == "trilinear":
        return Q, K1, K2
    Q, K1, K2 = np.asarray(Q), np.asarray(K1), np.asarray(K2)
    d = _last_dim("Q", Q)
    for name, x in (("K1", K1), ("K2", K2)):
        if _last_dim(name, x) != d:
            raise ValueError(f"{name} must have last dimension {d} like Q, got {x.shape[-1]}")
    return tuple(x @ M.astype(x.dtype, copy=False) for x, M in zip((Q, K1, K2), lift_matrices(form, _check_width(d))))


def pull_back(form: str, d: int, dQ, dK1, dK2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map gradients of the lifted operands back: the transpose of :func:`lift`.

    Parameters
    ----------
    form : {"trilinear", "determinant"}
    d : int
        Original width.
    dQ, dK1, dK2 : array_like, shape (..., rows, d')
        Gradients with respect to ``lift(form, Q, K1, K2)``; ``d' = lifted_width(form, d)``.

    Returns
    -------
    dQ, dK1, dK2 : ndarray, shape (..., rows, d)
        Gradients with respect to the original operands (each coordinate is the signed sum of
        the lifted columns it was copied to); for ``"trilinear"`` the inputs themselves. One
        product with :func:`lift_matrices`' transposes per operand, O(rows · d · d').
    """
    form = check_logits(form)
    d = _check_width(d)
    width = lifted_width(form, d)
    if form == "trilinear":
        return dQ, dK1, dK2
    grads = []
    for name, g, M in zip(("dQ", "dK1", "dK2"), (dQ, dK1, dK2), lift_matrices(form, d)):
        g = np.asarray(g)
        if _last_dim(name, g) != width:
            raise ValueError(f"{name} must have last dimension {width} (lifted width for d={d}), got {g.shape[-1]}")
        grads.append(g @ M.T.astype(g.dtype, copy=False))
    return tuple(grads)
