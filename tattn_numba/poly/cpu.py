"""The polynomial surrogate on the CPU: almost-linear forward and gradient (SPEC §5).

With the feature maps U1 (n×r), U2 (m1×r), U3 (m2×r) of :mod:`.features`, the attention matrix
is replaced by Ã = U1 (U2 ⊘ U3)^T and, by identity I1, every quantity becomes a product of
n×r or m×r matrices with small r×k summaries (Alman–Song 2023 for the forward,
Liang–Shi–Song–Zhou 2024 for the gradient):

    forward   [w | w∘Õ] = U1 · ((U2^T [1 | V1]) ∘ (U3^T [1 | V2]))
    backward  (Un = diag(w)^{-1} U1, δ = rowsum(dO ∘ Õ))
      key summaries    U2^T [1 | V1 | K1 | V1⊙K1],  U3^T [1 | V2 | K2 | V2⊙K2]
      query summaries  Un^T [dO | dO⊙Q | δ·Q]
      dQ  = s·(Σ_m dO[:,m] ∘ (Un·(A1∘A2))[:,m,:] − δ ∘ Un·(B1∘B2))
      dK1 = s·(Σ_m V1[:,m] ∘ (U2·(C1∘A2))[:,m,:] − U2·(C2∘B2)),   dV1 = U2·(S3 ∘ Un^T dO)
      (dK2, dV2 the same with the roles of 1 and 2 swapped)

where x⊙y is the row-wise outer product (a row of dv·d entries). Feature rows are built in
chunks of ``plan.chunk_rows`` and contracted with BLAS matrix products, so memory is
O(chunk·r + r·dv·d) and time O((n + m1 + m2)·r·d·dv), never an n×r·dv buffer.
"""

from __future__ import annotations

import numpy as np

from .._validation import AttentionInputs
from . import exp_approx
from .features import key_features, multi_index_table, query_features
from .plan import PolyPlan, key_column_maxima, make_plan

OPTIONS = frozenset({"tol", "degree", "family", "memory_budget"})


class _Balanced:
    """Per-batch-entry balanced variables: q̃ = s·Q·κ1·κ2/R, K1/κ1, K2/κ2, and coefficients."""

    def __init__(self, inputs: AttentionInputs, plan: PolyPlan, b: int):
        s = inputs.scale
        K1 = inputs.K1[b].astype(np.float64)
        K2 = inputs.K2[b].astype(np.float64)
        k1, k2 = key_column_maxima(K1[None])[0], key_column_maxima(K2[None])[0]
        radius = np.asarray(plan.radius).reshape(inputs.Q.shape[0], -1)[b]
        safe = np.where(radius > 0.0, radius, 1.0)
        self.Q = inputs.Q[b].astype(np.float64)
        self.Qt = s * self.Q * (k1 * k2)[None, :] / safe[:, None]
        self.K1, self.K2 = K1, K2
        self.K1t, self.K2t = K1 / k1, K2 / k2
        self.V1 = inputs.V1[b].astype(np.float64)
        self.V2 = inputs.V2[b].astype(np.float64)
        self.coefficients = exp_approx.exp_coefficients(plan.family, plan.degree, radius)
        self.table = multi_index_table(inputs.Q.shape[2], plan.degree)


def _chunks(rows: int, size: int):
    for start in range(0, rows, size):
        yield slice(start, min(start + size, rows))


def _key_summary(Kt, columns, table, chunk):
    """Σ over key rows of U^T · columns, streamed: (r, columns.shape[1])."""
    total = np.zeros((table.parent.shape[0], columns.shape[1]))
    for rows in _chunks(Kt.shape[0], chunk):
        total += key_features(Kt[rows], table).T @ columns[rows]
    return total


def _outer_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise outer product x⊙y: (rows, a) and (rows, b) → (rows, a·b), index a_idx·b + b_idx."""
    return (x[:, :, None] * y[:, None, :]).reshape(x.shape[0], -1)


def _check_normaliser(w: np.ndarray, plan: PolyPlan) -> None:
    if not np.all(np.isfinite(w)) or np.any(w <= 0.0):
        raise ValueError(
            f"the degree-{plan.degree} {plan.family} polynomial is not accurate enough for these inputs "
            f"(certified relative error up to {float(np.max(plan.epsilon)):.3g}, normaliser not positive); "
            "raise degree or pass tol"
        )


def forward(inputs: AttentionInputs, *, tol=None, degree=None, family="chebyshev", memory_budget=None):
    """Surrogate forward. Returns float64 O (B, n, dv), lse (B, n) = log w̃ and the plan.

    Time O((n + m1 + m2)·r·dv) per batch entry; memory O(chunk·r + r·dv).
    """
    if inputs.causal:
        raise ValueError("causal=True is not supported by method='poly' yet; use method='exact'")
    plan = make_plan(inputs, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    worst = float(np.max(plan.epsilon))
    if not worst < 1.0:
        widest = float(np.max(plan.radius))
        try:
            advice = f"use degree >= {exp_approx.min_degree(plan.family, widest, 0.5)} or pass tol"
        except ValueError:
            advice = "no degree is certified at this radius in float64; use method='exact'"
        raise ValueError(
            f"degree {plan.degree} is too low for these inputs: the certified relative error of the "
            f"{plan.family} polynomial reaches {worst:.3g} >= 1 (logit radius up to {widest:.3g}); {advice}"
        )
    B, n, _ = inputs.Q.shape
    dv = inputs.V1.shape[2]
    O = np.empty((B, n, dv))
    lse = np.empty((B, n))
    for b in range(B):
        v = _Balanced(inputs, plan, b)
        m1, m2 = v.K1.shape[0], v.K2.shape[0]
        left = _key_summary(v.K1t, np.hstack([np.ones((m1, 1)), v.V1]), v.table, plan.chunk_rows)
        right = _key_summary(v.K2t, np.hstack([np.ones((m2, 1)), v.V2]), v.table, plan.chunk_rows)
        summary = left * right
        for rows in _chunks(n, plan.chunk_rows):
            out = query_features(v.Qt[rows], v.coefficients[rows], v.table) @ summary
            w = out[:, 0]
            _check_normaliser(w, plan)
            O[b, rows] = out[:, 1:] / w[:, None]
            lse[b, rows] = np.log(w)
    return O, lse, plan


def backward(inputs: AttentionInputs, O: np.ndarray, lse: np.ndarray, plan: PolyPlan, dO: np.ndarray):
    """Surrogate gradient (the formulas of SPEC §2 with Ã for A), float64 (dQ, dK1, dK2, dV1, dV2).

    Time O((n + m1 + m2)·r·d·dv) per batch entry; memory O(chunk·(r + d·dv) + r·d·dv).
    """
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    s = inputs.scale
    chunk = plan.chunk_rows
    grads = [np.empty((B,) + x.shape[1:]) for x in (inputs.Q, inputs.K1, inputs.K2, inputs.V1, inputs.V2)]
    dQ, dK1, dK2, dV1, dV2 = grads
    dO = dO.astype(np.float64)
    for b in range(B):
        v = _Balanced(inputs, plan, b)
        m1, m2 = v.K1.shape[0], v.K2.shape[0]
        left = _key_summary(v.K1t, np.hstack([np.ones((m1, 1)), v.V1, v.K1, _outer_rows(v.V1, v.K1)]),
                            v.table, chunk)
        right = _key_summary(v.K2t, np.hstack([np.ones((m2, 1)), v.V2, v.K2, _outer_rows(v.V2, v.K2)]),
                             v.table, chunk)
        s2, S2, B1, A1 = left[:, 0], left[:, 1:1 + dv], left[:, 1 + dv:1 + dv + d], left[:, 1 + dv + d:]
        s3, S3, B2, A2 = right[:, 0], right[:, 1:1 + dv], right[:, 1 + dv:1 + dv + d], right[:, 1 + dv + d:]
        normaliser = s2 * s3
        query_side = np.hstack([A1 * A2, B1 * B2])
        delta = np.einsum("nm,nm->n", dO[b], O[b])
        summary_q = np.zeros((normaliser.shape[0], dv + dv * d + d))
        for rows in _chunks(n, chunk):
            U1 = query_features(v.Qt[rows], v.coefficients[rows], v.table)
            w = U1 @ normaliser
            _check_normaliser(w, plan)
            U1 /= w[:, None]
            T = U1 @ query_side
            terms = T[:, :dv * d].reshape(-1, dv, d)
            dQ[b, rows] = s * (np.einsum("cm,cml->cl", dO[b, rows], terms) - delta[rows, None] * T[:, dv * d:])
            summary_q += U1.T @ np.hstack([dO[b, rows], _outer_rows(dO[b, rows], v.Q[rows]),
                                           delta[rows, None] * v.Q[rows]])
        Gq, C1, C2 = summary_q[:, :dv], summary_q[:, dv:dv + dv * d], summary_q[:, dv + dv * d:]
        for Kt, V, own, other_S, other_A, other_B, dK, dV in (
            (v.K1t, v.V1, b, S3, A2, B2, dK1, dV1),
            (v.K2t, v.V2, b, S2, A1, B1, dK2, dV2),
        ):
            side = np.hstack([other_S * Gq, C1 * other_A, C2 * other_B])
            for rows in _chunks(Kt.shape[0], chunk):
                T = key_features(Kt[rows], v.table) @ side
                dV[own, rows] = T[:, :dv]
                terms = T[:, dv:dv + dv * d].reshape(-1, dv, d)
                dK[own, rows] = s * (np.einsum("cm,cml->cl", V[rows], terms) - T[:, dv + dv * d:])
    return dQ, dK1, dK2, dV1, dV2
