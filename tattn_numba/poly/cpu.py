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
from . import causal as _causal
from ._blocks import SummaryLayout, scale_rows_and_columns
from ._blocks import chunks as _chunks
from . import _summaries
from .features import key_features, multi_index_table, query_features
from .options import NAMES
from .plan import (PolyPlan, check_certified, check_normaliser, keeps_key_summaries, key_column_maxima,
                   make_plan)

OPTIONS = NAMES


class _Balanced:
    """Per-batch-entry balanced variables: q̃ = s·Q·κ1·κ2/R, K1/κ1, K2/κ2, and coefficients.
    Batch entry ``b`` reads key/value entry ``inputs.key_batch[b]``."""

    def __init__(self, inputs: AttentionInputs, plan: PolyPlan, b: int):
        s = inputs.scale
        B, n = inputs.Q.shape[:2]
        kb = inputs.key_batch[b]
        self.Q = np.asarray(inputs.Q[b], dtype=np.float64)
        self.K1, self.K2, self.V1, self.V2 = (
            np.asarray(x[kb], dtype=np.float64) for x in (inputs.K1, inputs.K2, inputs.V1, inputs.V2)
        )
        k1, k2 = key_column_maxima(self.K1[None])[0], key_column_maxima(self.K2[None])[0]
        radius = np.asarray(plan.radius).reshape(B, n)[b]
        row_factor = s / np.where(radius > 0.0, radius, 1.0)
        self.Qt = scale_rows_and_columns(self.Q, row_factor, k1 * k2)
        self.K1t = scale_rows_and_columns(self.K1, np.ones(self.K1.shape[0]), 1.0 / k1)
        self.K2t = scale_rows_and_columns(self.K2, np.ones(self.K2.shape[0]), 1.0 / k2)
        self.coefficients = np.asarray(plan.coefficients).reshape(B, n, -1)[b]
        self.table = multi_index_table(inputs.Q.shape[2], plan.degree)


def _key_summaries(v: _Balanced, width: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """U2^T [1 | V1 | K1 | V1⊙K1] and U3^T [1 | V2 | K2 | V2⊙K2], first ``width`` columns."""
    left = _summaries.summary(lambda rows: key_features(v.K1t[rows], v.table), np.ones(v.K1.shape[0]),
                    v.V1, v.K1, width, v.table, chunk)
    right = _summaries.summary(lambda rows: key_features(v.K2t[rows], v.table), np.ones(v.K2.shape[0]),
                     v.V2, v.K2, width, v.table, chunk)
    return left, right


def forward(inputs: AttentionInputs, *, for_backward: bool = True, tol=None, degree=None, family="chebyshev",
            memory_budget=None):
    """Surrogate forward. Returns float64 O (B, n, dv), lse (B, n) = log w̃, the plan (the
    certificate) and what the backward can reuse.

    Time O((n + m1 + m2)·r·dv) per batch entry; memory O(chunk·r + r·dv). With
    ``for_backward`` (and no causal mask) the key pass computes the backward's wide summaries
    U^T[1 | V | K | V⊙K] right away and saves them (2·B·r·(1 + dv + d + dv·d) floats, when that
    fits a quarter of the memory budget): the backward then skips a pass over the keys, two
    feature builds and two r×(1 + dv + d + dv·d) products.
    """
    plan = make_plan(inputs, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    check_certified(plan)
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    O = np.empty((B, n, dv))
    lse = np.empty((B, n))
    layout = SummaryLayout(d, dv)
    Bk = inputs.K1.shape[0]
    keep = keeps_key_summaries(for_backward, inputs.mask, Bk, plan, d, dv, memory_budget, inputs.held_bytes)
    saved = {} if keep else None
    for kb, group in inputs.heads.groups():
        summary = None
        for b in group:
            v = _Balanced(inputs, plan, b)
            if not inputs.mask.is_full:
                widths = inputs.mask.narrow_window(n)
                out = (_causal.forward(v, plan.chunk_rows) if widths is None
                       else _causal.window_forward(v, plan.chunk_rows, widths))
                check_normaliser(out[:, 0], plan)
                O[b] = out[:, 1:] / out[:, :1]
                lse[b] = np.log(out[:, 0])
                continue
            if summary is None:  # the key summaries, once per key/value entry
                left, right = _key_summaries(v, layout.wide if keep else layout.narrow, plan.chunk_rows)
                if keep:
                    saved[kb] = (left, right)
                summary = left[:, :layout.narrow] * right[:, :layout.narrow]
            for rows in _chunks(n, plan.chunk_rows):
                out = (summary.T @ query_features(v.Qt[rows], v.coefficients[rows], v.table)).T
                w = out[:, 0]
                check_normaliser(w, plan)
                O[b, rows] = out[:, 1:] / w[:, None]
                lse[b, rows] = np.log(w)
    return O, lse, plan, saved


def backward(inputs: AttentionInputs, O: np.ndarray, lse: np.ndarray, plan: PolyPlan, saved, dO: np.ndarray):
    """Surrogate gradient (the formulas of SPEC §2 with Ã for A), float64 (dQ, dK1, dK2, dV1, dV2).

    Time O((n + m1 + m2)·r·d·dv) per batch entry; memory O(chunk·(r + d·dv) + r·d·dv).
    """
    B, n, d = inputs.Q.shape
    dv = inputs.V1.shape[2]
    layout = SummaryLayout(d, dv)
    s = inputs.scale
    chunk = plan.chunk_rows
    dQ = np.empty(inputs.Q.shape)
    dK1, dK2, dV1, dV2 = (np.zeros(x.shape) for x in (inputs.K1, inputs.K2, inputs.V1, inputs.V2))
    dO = dO.astype(np.float64)
    for kb, group in inputs.heads.groups():
        if not inputs.mask.is_full:
            widths = inputs.mask.narrow_window(n)
            for b in group:  # each query entry scans the shared keys; their gradients add up
                v = _Balanced(inputs, plan, b)
                row_grads = (_causal.backward(v, O[b], dO[b], s, chunk) if widths is None
                             else _causal.window_backward(v, O[b], dO[b], s, chunk, widths))
                dQ[b] = row_grads[0]
                for g, value in zip((dK1, dK2, dV1, dV2), row_grads[1:]):
                    g[kb] += value
                del row_grads  # not alive during the next entry's scan (the memory estimate's phases)
            continue
        left, right = None, None
        summary_q = 0.0
        for b in group:
            v = _Balanced(inputs, plan, b)
            if left is None:
                left, right = saved[kb] if saved is not None else _key_summaries(v, layout.wide, chunk)
                s2, S2, B1, A1 = layout.split(left)
                s3, S3, B2, A2 = layout.split(right)
                normaliser = s2 * s3
                query_side = np.hstack([A1 * A2, B1 * B2])
            summary_q = summary_q + _summaries.query_pass(v, b, plan, normaliser, query_side, O[b], dO[b], s, dQ,
                                                          layout)
        # the key gradients are linear in the query summaries: one key pass per key/value entry
        _, Gq, C2, C1 = layout.split(summary_q)
        for Kt, V, other_S, other_A, other_B, dK, dV in (
            (v.K1t, v.V1, S3, A2, B2, dK1, dV1),
            (v.K2t, v.V2, S2, A1, B1, dK2, dV2),
        ):
            side = np.hstack([other_S * Gq, C1 * other_A, C2 * other_B])
            for rows in _chunks(Kt.shape[0], chunk):
                T = (side.T @ key_features(Kt[rows], v.table)).T
                dV[kb, rows] = T[:, :dv]
                terms = T[:, dv:dv + dv * d].reshape(-1, dv, d)
                dK[kb, rows] = s * (np.einsum("cm,cml->cl", V[rows], terms) - T[:, dv + dv * d:])
    return dQ, dK1, dK2, dV1, dV2


