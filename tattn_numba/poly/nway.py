"""The certified low-rank polynomial surrogate of n-way attention, any order t >= 1 (SPEC §9).

For a degree-g polynomial P_i(x) = Σ_k a_{i,k}·(x / R_i)^k and the logit
x = s·Σ_l q_l·Π_a k_{a,l}, the multinomial theorem gives one feature column per multi-index
α ∈ N^d, |α| <= g, whatever t (rank r = C(d + g, g)):

    P_i(x) = Σ_α U1[i, α]·Π_a U_a[j_a, α],
    U1[α] = a_|α|·(|α|!/α!)·Π_l q̃_l^{α_l},   q̃_l = s·q_l·Π_a κ_{a,l} / R_i,
    U_a[α] = Π_l (k_{a,l} / κ_{a,l})^{α_l},    κ_{a,l} = max_j |Ka[j, l]|,

(:func:`.features.query_features` and :func:`.features.key_features` as they are). By identity
I1 every sum over the Π m_a tuples factors into a Hadamard product of t key summaries r×k:

    forward   [w | w∘Õ] = U1 · Π_a (U_a^T [1 | V_a])
    backward  (Un = diag(w)^{-1} U1, δ = rowsum(dO ∘ Õ), wide summaries
               W_a = U_a^T [1 | V_a | K_a | V_a⊙K_a] = [s_a | S_a | B_a | A_a],
               query summary Un^T [δ | dO | δ·Q | dO⊙Q] = [· | G | Z | Y])
      dQ  = s·(Σ_m dO[:,m] ∘ (Un·Π_a A_a)[:,m,:] − δ ∘ Un·Π_a B_a)
      dKa = s·(Σ_m Va[:,m] ∘ (U_a·(Y ∘ Π_{b≠a} A_b))[:,m,:] − U_a·(Z ∘ Π_{b≠a} B_b))
      dVa = U_a·(G ∘ Π_{b≠a} S_b)

(SPEC §2 with P̃ for P; the products over the other key sets come from prefix and suffix
products, O(t) summaries, not t²). Time O((n + Σ m_a)·r·dv) forward and O((n + Σ m_a)·r·d·dv)
backward per batch entry; memory O(chunk·r + t·r·d·dv). Causal inputs use the prefix scans of
:mod:`._nway_scans`. The plan (:func:`make_nway_plan`) certifies |Õ − O| entrywise as
:mod:`.plan` does for t = 2, whose code it runs with the key sets as a list.

Cited results: Alman–Song (2023) for the forward, Liang–Shi–Song–Zhou (2024) for the gradient.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from .. import config
from ._blocks import SummaryLayout, chunks, scale_rows_and_columns
from ._nway_scans import backward_scan, forward_scan
from . import _summaries
from ._summaries import row_major_columns
from .features import key_features, multi_index_table, query_features, rank
from .options import NAMES, PolyOptions
from .plan import (ASSUMED_FLOPS, BOUND_SLACK, MEMORY_SLACK, Certifier, PolyPlan, certified_degree, certified_radii,
                   check_certified, check_finite_radii_and_ranges, check_normaliser, column_abs_max, column_extrema,
                   key_column_maxima, max_row_norm, memory_refusal, plan_from_certificate, polynomial_gradient_bounds,
                   polynomial_output_bound, product_ranges, sum_key_groups, sum_query_copies, tuple_radii)
from .rounding import (forward_roundings, output_rounding, tuple_backward_roundings, tuple_gradient_magnitudes,
                       tuple_gradient_rounding, tuple_rounding, unit_roundoff)

__all__ = ["OPTIONS", "make_nway_plan", "memory_estimate", "forward", "backward", "gradient_bounds"]

#: The keyword options of ``method="poly"`` (those of :class:`.options.PolyOptions`).
OPTIONS = NAMES


def _shape(inputs) -> tuple[int, int, int, list[int], int]:
    """(B, n, d, [m_1..m_t], dv) of validated n-way inputs."""
    B, n, d = inputs.Q.shape
    return B, n, d, [K.shape[1] for K in inputs.keys], inputs.values[0].shape[2]


def _tuple_counts(n: int, lengths: list[int], causal: bool) -> np.ndarray:
    """How many key tuples row i sees, float64 (n,): Π_a m_a, or (i + 1)^t when causal."""
    if causal:
        return (np.arange(1, n + 1, dtype=np.float64)) ** len(lengths)
    return np.full(n, float(np.prod(lengths, dtype=np.float64)))


def _products_name(t: int) -> str:
    return "V1" if t == 1 else "V1·V2" if t == 2 else f"V1·…·V{t}"


def _memory_phases(r: int, d: int, dv: int, rows: int, *, n: int, lengths: list[int], batch: int, causal: bool,
                   degree: int, itemsize: int) -> dict:
    """Peak bytes (float64 unless said otherwise) of the forward, of what it keeps for the
    backward and of the backward, per phase of :func:`forward` and :func:`backward`."""
    f8, B, t = 8, batch, len(lengths)
    widen = 1 if itemsize != 8 else 0  # float32 inputs are widened to float64 per batch entry
    layout = SummaryLayout(d, dv)
    W, k = layout.wide, layout.narrow
    total_m, longest = sum(lengths), max([n, *lengths])
    c = min(rows, longest)
    side = dv + dv * d + d
    # the plan: statistics (|Q|, the keys' powers), radii, fits and the certificate; kept: radius,
    # ε, κ, coefficients and the two bounds per row
    plan = f8 * B * (n * (10 + 4 * dv + degree) + 2 * (n + longest) * d)
    plan_kept = f8 * B * n * (3 + (degree + 1) + 2 * dv)
    out = f8 * B * n * (dv + 1) + B * n * (dv * itemsize + 8)  # float64 O and lse, their cast and copy
    balanced = f8 * (widen * (n * d + total_m * (d + dv)) + (n + total_m) * d + 2 * longest)
    if causal:  # n == m_a: the entry's own gradients (t·n·(d + dv)) and stacked values (t·n·dv)
        pieces = -(-n // c)
        chunk = (t + 3) * c * r + (2 * t + 4) * c * W
        forward = t * k * r + n * k + chunk
        backward = (pieces + 3) * t * W * r + W * r + n + t * n * (d + 2 * dv) + chunk
    else:
        forward = (t + 2) * k * r + n * k + max(k * c + 2 * r * c + k * r, r * c + 2 * k * c)
        query_chunk = 2 * r * c + 2 * c * side + W * c + W * r
        key_chunk = r * side + 2 * c * side + r * c + 2 * c * d
        backward = (3 * t + 3) * W * r + r * side + n + total_m * (d + dv) + max(query_chunk, key_chunk)
    grads = f8 * B * (n * d + total_m * (d + dv))
    backward_peak = grads + f8 * B * n * dv + balanced + f8 * backward + B * (n * d + total_m * (d + dv)) * itemsize
    return {"forward": max(plan, plan_kept + out + balanced + f8 * forward),
            "kept": plan_kept + out, "backward": backward_peak}


def memory_estimate(r: int, d: int, dv: int, rows: int, *, n: int, lengths: list[int], batch: int = 1,
                    causal: bool = False, degree: int = 0, itemsize: int = 8) -> int:
    """Peak extra bytes of :func:`forward` followed by :func:`backward` (``nway_attention_grad``)
    for rank ``r``, ``rows`` per chunk and key sets of ``lengths`` rows: the plan's per-row
    arrays, float64 copies of float32 operands, the balanced variables, the t key summaries
    (r×(1 + dv) forward, r×(1 + dv + d + dv·d) backward) with their products, the feature
    chunks, with ``causal`` the prefix states stored per chunk (t·r·(1 + dv + d + dv·d) floats
    each), and the gradients with their casts. Counted from the code; tests check it against
    tracemalloc's peak (measured 1.1–1.7× the NumPy peak; the kernels' scratch is O(t·r·(1 + dv +
    d + dv·d)))."""
    phases = _memory_phases(r, d, dv, rows, n=n, lengths=lengths, batch=batch, causal=causal, degree=degree,
                            itemsize=itemsize)
    return int(MEMORY_SLACK * max(phases["forward"], phases["kept"] + phases["backward"]))


def _budgeted_chunk(inputs, degree: int, budget: int, chosen: bool = True) -> tuple[int, int]:
    """(chunk rows, memory estimate) for ``degree``: the largest chunk (at most
    ``config.POLY_CHUNK_ROWS``) whose estimate fits ``budget``; ``ValueError`` naming
    ``memory_budget`` when none does (``chosen=False``: degree 0, a lower bound for ``tol``)."""
    B, n, d, lengths, dv = _shape(inputs)
    r = rank(d, degree)
    cap = int(max(1, min(config.POLY_CHUNK_ROWS, max([n, *lengths]))))
    shape = dict(n=n, lengths=lengths, batch=B, causal=inputs.causal, degree=int(degree),
                 itemsize=np.dtype(inputs.dtype).itemsize)
    candidates = sorted({cap} | {1 << p for p in range(cap.bit_length()) if 1 << p < cap}, reverse=True)
    costs = [(memory_estimate(r, d, dv, rows, **shape), rows) for rows in candidates]
    fitting = [(cost, rows) for cost, rows in costs if cost <= budget]
    if fitting:
        cost, rows = fitting[0]
        return rows, cost
    cost, _ = min(costs)
    problem = f"B={B}, n={n}, m={tuple(lengths)}, d={d}, dv={dv}{', causal' if inputs.causal else ''}"
    raise memory_refusal(cost, budget, problem, degree, r, chosen)


class _Statistics:
    """The O((n + Σ m_a)·(d + dv)) numbers of n-way inputs the plan reads (batch-flattened, the
    key statistics of each output entry's key entry ``key_batch[b]``):
    κ_a (B, d), max_j‖Ka_j‖_{2t} (B,), value column extrema (B, dv), and for Q the weighted ℓ1
    Σ_l |Q[i,l]|·Π_a κ_{a,l}, ‖Q_i‖₂ (B, n) and max_i |Q[i,l]| (B, d)."""

    def __init__(self, inputs):
        t, kb = len(inputs.keys), inputs.key_batch
        Q = np.asarray(inputs.Q, dtype=np.float64)
        self.key_abs_max = [column_abs_max(K)[kb] for K in inputs.keys]
        self.value_extrema = [tuple(x[kb] for x in column_extrema(V)) for V in inputs.values]
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing radii are refused by the plan
            self.key_norms = [max_row_norm(K, t)[kb] for K in inputs.keys]
            self.Q_weighted_l1 = np.einsum("bnl,bl->bn", np.abs(Q), reduce(np.multiply, self.key_abs_max))
            self.Q_l2 = np.sqrt(np.einsum("bnl,bnl->bn", Q, Q))
        self.Q_abs_max = column_abs_max(inputs.Q)

    def value_bound(self) -> np.ndarray:
        """Π_a max_j |Va[j, m]|, (B, dv): bounds every tuple product of the values."""
        return reduce(np.multiply, [np.maximum(hi, -lo) for lo, hi in self.value_extrema])

    def value_ranges(self) -> np.ndarray:
        """max − min over tuples of Π_a Va[j_a, m], (B, dv)."""
        return product_ranges([lo for lo, _ in self.value_extrema], [hi for _, hi in self.value_extrema])


def _row_rounding(inputs, coefficients, radius, epsilon, degree: int, lse=None):
    """:func:`.rounding.tuple_rounding` of the n-way forward: Π m_a tuples per row ((i + 1)^t
    causal), each entering the computed state once, and the K of
    :func:`.rounding.forward_roundings` for t key sets."""
    _, n, d, lengths, _ = _shape(inputs)
    tuples = _tuple_counts(n, lengths, inputs.causal)
    return tuple_rounding(coefficients, radius, epsilon, roundings=forward_roundings(degree, rank(d, degree), *lengths),
                          tuples=tuples, spans=tuples, lse=lse)


def _certifier(inputs, stats: _Statistics, family: str, radius: np.ndarray, ranges: np.ndarray) -> Certifier:
    """The :class:`.plan.Certifier` of the n-way problem (rounding: :func:`_row_rounding`)."""
    _, _, _, lengths, _ = _shape(inputs)

    def rounding(coefficients, epsilon, degree):
        return _row_rounding(inputs, coefficients, radius, epsilon, degree)

    return Certifier(family, radius, ranges, stats.value_bound(), inputs.dtype, rounding,
                     products=_products_name(len(lengths)))


def make_nway_plan(inputs, *, tol=None, degree=None, family="chebyshev", memory_budget=None) -> PolyPlan:
    """Choose the degree (or check the given one) and certify the n-way surrogate.

    ``inputs`` are validated n-way operands (attributes ``Q`` (B, n, d), one row block per
    output entry, ``keys`` and ``values`` (tuples of (Bk, m_a, ·)), ``key_batch`` (B,), ``scale``,
    ``causal``, ``dtype``, ``batch_shape``, as :func:`tattn_numba.nway` builds them). Exactly one of ``tol`` and ``degree``. The per-row
    radii are :func:`.plan.tuple_radii` (ℓ∞ bound with Π_a κ_{a,l}, Hölder with exponents 2,
    2t, …, 2t); the output bound is κ_i·range_m/2 over the tuple products of the values plus the
    rounding of :mod:`.rounding` with Π m_a tuples (or (i + 1)^t, causal) and the cast to the
    input dtype. ``ValueError`` naming the argument for an impossible ``tol``/``degree`` and
    naming ``memory_budget`` when the estimate passes it, before anything large is allocated.
    Cost O((n + Σ m_a)·(d + dv)) per batch entry.
    """
    options = PolyOptions(tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    tol, degree, family, budget = options.tol, options.degree, options.family, options.budget
    B, n, d, lengths, dv = _shape(inputs)
    t = len(lengths)
    _budgeted_chunk(inputs, 0 if degree is None else degree, budget, chosen=degree is not None)
    stats = _Statistics(inputs)
    with np.errstate(over="ignore", invalid="ignore"):
        radius, global_radius = tuple_radii(inputs.scale, stats.Q_weighted_l1, stats.Q_l2, stats.Q_abs_max,
                                            stats.key_abs_max, stats.key_norms)
        radius = certified_radii(radius, d, t)
        ranges = stats.value_ranges()
    check_finite_radii_and_ranges(radius, ranges, t)
    certify = _certifier(inputs, stats, family, radius, ranges)
    degree, certificate = certified_degree(certify, tol, degree)
    rows, nbytes = _budgeted_chunk(inputs, degree, budget)
    layout = SummaryLayout(d, dv)
    total_m = sum(lengths)
    flops = 2.0 * B * rank(d, degree) * ((n + total_m) * layout.narrow + (n + 2 * total_m) * layout.wide * 2)
    return plan_from_certificate(certify, degree, certificate, global_radius, inputs.batch_shape, d,
                                 seconds=flops / ASSUMED_FLOPS, nbytes=nbytes, chunk=rows)


class _Balanced:
    """Batch entry ``b`` in float64 with its balanced variables: q̃ = s·Q·Π_a κ_a / R (``Qt``),
    Ka / κ_a (``keys_t``) of its key entry ``kb``, the row coefficients and the multi-index table."""

    def __init__(self, inputs, plan: PolyPlan, b: int):
        B, n, d, _, _ = _shape(inputs)
        self.kb = int(inputs.key_batch[b])
        self.Q = np.asarray(inputs.Q[b], dtype=np.float64)
        self.keys = [np.asarray(K[self.kb], dtype=np.float64) for K in inputs.keys]
        self.values = [np.asarray(V[self.kb], dtype=np.float64) for V in inputs.values]
        kappas = [key_column_maxima(K[None])[0] for K in self.keys]
        radius = np.asarray(plan.radius).reshape(B, n)[b]
        row_factor = inputs.scale / np.where(radius > 0.0, radius, 1.0)
        self.Qt = scale_rows_and_columns(self.Q, row_factor, reduce(np.multiply, kappas))
        self.keys_t = [scale_rows_and_columns(K, np.ones(K.shape[0]), 1.0 / kappa)
                       for K, kappa in zip(self.keys, kappas)]
        self.coefficients = np.asarray(plan.coefficients).reshape(B, n, -1)[b]
        self.table = multi_index_table(d, plan.degree)

    def key_summary(self, a: int, width: int, chunk: int) -> np.ndarray:
        """U_a^T [1 | V_a | K_a | V_a⊙K_a], first ``width`` columns: (r, width)."""
        Kt = self.keys_t[a]
        return _summaries.summary(lambda rows: key_features(Kt[rows], self.table), np.ones(Kt.shape[0]), self.values[a],
                        self.keys[a], width, self.table, chunk)

    def key_rows(self, rows: slice, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Row-major key features (t, rows, r) and summary columns (t, rows, width) of ``rows``
        (the causal scans: every key set has n rows)."""
        features = np.stack([key_features(Kt[rows], self.table).T for Kt in self.keys_t])
        columns = np.stack([row_major_columns(np.ones(rows.stop - rows.start), V[rows], K[rows], width)
                            for K, V in zip(self.keys, self.values)])
        return features, columns

    def query_rows(self, rows: slice) -> np.ndarray:
        """Row-major U1 of ``rows``, (rows, r)."""
        return np.ascontiguousarray(query_features(self.Qt[rows], self.coefficients[rows], self.table).T)


def _others(summaries: list) -> list:
    """Π_{b≠a} summaries[b] for every a (ones for t = 1), by prefix and suffix products."""
    t = len(summaries)
    prefix = [np.ones_like(summaries[0])]
    for x in summaries[:-1]:
        prefix.append(prefix[-1] * x)
    suffix = np.ones_like(summaries[0])
    others = [None] * t
    for a in range(t - 1, -1, -1):
        others[a] = prefix[a] * suffix
        suffix = suffix * summaries[a]
    return others


def _forward_entry(v: _Balanced, plan: PolyPlan, causal: bool, layout: SummaryLayout, shared: dict) -> np.ndarray:
    """[w | w·Õ] (n, 1 + dv) of one batch entry; ``shared`` keeps the key summaries of each key
    entry for the other entries of its group (grouped heads)."""
    n, chunk, k = v.Q.shape[0], plan.chunk_rows, layout.narrow
    out = np.empty((n, k))
    if causal:
        P = np.zeros((len(v.keys), k, v.table.parent.shape[0]))
        for rows in chunks(n, chunk):
            forward_scan(v.query_rows(rows), *v.key_rows(rows, k), P, out[rows])
        return out
    if v.kb not in shared:
        shared[v.kb] = reduce(np.multiply, [v.key_summary(a, k, chunk) for a in range(len(v.keys))])
    summary = shared[v.kb]
    for rows in chunks(n, chunk):
        out[rows] = (summary.T @ query_features(v.Qt[rows], v.coefficients[rows], v.table)).T
    return out


def forward(inputs, *, tol=None, degree=None, family="chebyshev", memory_budget=None):
    """Surrogate forward of validated n-way inputs (see :func:`make_nway_plan`): float64 O
    (B, n, dv), lse (B, n) = log w̃ and the plan (the certificate).

    Time O((n + Σ m_a)·r·dv) per batch entry; memory O(chunk·r + t·r·dv) (causal: the prefix
    scans, O(chunk·t·r + t·r·dv)).
    """
    plan = make_nway_plan(inputs, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    check_certified(plan)
    B, n, d, _, dv = _shape(inputs)
    layout = SummaryLayout(d, dv)
    O, lse = np.empty((B, n, dv)), np.empty((B, n))
    shared = {}
    for b in range(B):
        out = _forward_entry(_Balanced(inputs, plan, b), plan, inputs.causal, layout, shared)
        check_normaliser(out[:, 0], plan)
        O[b] = out[:, 1:] / out[:, :1]
        lse[b] = np.log(out[:, 0])
    return O, lse, plan


def _backward_group(inputs, plan: PolyPlan, members: np.ndarray, O: np.ndarray, dO: np.ndarray, dQ: np.ndarray,
                    layout: SummaryLayout) -> tuple[list, list]:
    """Full mask: writes dQ[b] for the batch entries ``members`` that share one key entry and
    returns that entry's key and value gradients. The wide key summaries are built once, the
    query summaries of the members add up (the key gradients are linear in them), and one pass
    over the keys follows, as :func:`.cpu.backward` does for t = 2."""
    chunk, d, dv, s = plan.chunk_rows, layout.d, layout.dv, inputs.scale
    v = _Balanced(inputs, plan, members[0])
    wide = [v.key_summary(a, layout.wide, chunk) for a in range(len(v.keys))]
    normaliser, _, B_all, A_all = layout.split(reduce(np.multiply, wide))
    query_side = np.hstack([A_all, B_all])
    summary_q = 0.0
    for k, b in enumerate(members):
        if k:  # the members differ in Q and its plan rows only; the keys are the group's
            v = _Balanced(inputs, plan, b)
        summary_q = summary_q + _summaries.query_pass(v, b, plan, normaliser, query_side, O[b], dO[b], s, dQ, layout)
    _, G, Z, Y = layout.split(summary_q)
    dkeys, dvalues = [], []
    for Kt, V, other in zip(v.keys_t, v.values, _others(wide)):
        _, S_o, B_o, A_o = layout.split(other)
        side = np.hstack([S_o * G, Y * A_o, Z * B_o])
        dK, dV = np.empty((Kt.shape[0], d)), np.empty((Kt.shape[0], dv))
        for rows in chunks(Kt.shape[0], chunk):
            T = (side.T @ key_features(Kt[rows], v.table)).T
            dV[rows] = T[:, :dv]
            terms = T[:, dv:dv + dv * d].reshape(-1, dv, d)
            dK[rows] = s * (np.einsum("cm,cml->cl", V[rows], terms) - T[:, dv + dv * d:])
        dkeys.append(dK)
        dvalues.append(dV)
    return dkeys, dvalues


def _causal_backward_entry(v: _Balanced, plan: PolyPlan, O: np.ndarray, dO: np.ndarray, s: float,
                           dQ: np.ndarray, layout: SummaryLayout) -> tuple[list, list]:
    """Causal gradients of one batch entry (writes dQ (n, d)): a prefix pass storing the
    states at every chunk end, then the reverse scans of :func:`._nway_scans.backward_scan`."""
    n, t, r, W = v.Q.shape[0], len(v.keys), v.table.parent.shape[0], layout.wide
    delta = np.einsum("nm,nm->n", dO, O)
    pieces = list(chunks(n, plan.chunk_rows))
    P = np.zeros((t, W, r))
    stored = np.empty((len(pieces), t, W, r))
    for index, rows in enumerate(pieces):
        forward_scan(np.empty((0, r)), *v.key_rows(rows, W), P, np.empty((0, W)))
        stored[index] = P
    acc = np.zeros((t, W, r))
    dK, dV = np.empty((t, n, layout.d)), np.empty((t, n, layout.dv))
    values = np.stack(v.values)
    for index in range(len(pieces) - 1, -1, -1):
        rows = pieces[index]
        backward_scan(v.query_rows(rows), *v.key_rows(rows, W), row_major_columns(delta[rows], dO[rows], v.Q[rows], W), v.Q[rows], dO[rows],
                      delta[rows], values[:, rows], s, stored[index], acc, dQ[rows], dK[:, rows], dV[:, rows])
    return list(dK), list(dV)


def backward(inputs, O: np.ndarray, plan: PolyPlan, dO: np.ndarray) -> tuple:
    """Surrogate gradient (SPEC §2 with P̃ for P) of validated n-way inputs, float64
    (dQ (B, n, d), dkeys, dvalues (tuples of (Bk, m_a, ·), summed over the entries that share a
    key entry)), from the forward's float64 ``O``.

    Time O((n + Σ m_a)·r·d·dv) per batch entry; memory O(chunk·(r + d·dv) + t·r·d·dv) (causal:
    plus t·r·(1 + dv + d + dv·d) floats per chunk for the stored prefix states).
    """
    B, n, d, lengths, dv = _shape(inputs)
    layout = SummaryLayout(d, dv)
    dQ = np.empty((B, n, d))
    Bk = inputs.keys[0].shape[0]
    dkeys = [np.zeros((Bk, m, d)) for m in lengths]
    dvalues = [np.zeros((Bk, m, dv)) for m in lengths]
    dO = np.asarray(dO, dtype=np.float64)
    for kb, members in inputs.heads.groups():
        if inputs.causal:  # each member scans the shared keys; their gradients add up
            for b in members:
                keys_b, values_b = _causal_backward_entry(_Balanced(inputs, plan, b), plan, O[b], dO[b], inputs.scale,
                                                          dQ[b], layout)
                for a in range(len(lengths)):
                    dkeys[a][kb] += keys_b[a]
                    dvalues[a][kb] += values_b[a]
            continue
        keys_k, values_k = _backward_group(inputs, plan, members, O, dO, dQ, layout)
        for a in range(len(lengths)):
            dkeys[a][kb], dvalues[a][kb] = keys_k[a], values_k[a]
    return dQ, tuple(dkeys), tuple(dvalues)


def _backward_layout(n: int, lengths: list[int], causal: bool, chunk: int) -> tuple[list, list, list]:
    """Per key set: how many rows of it query i sees (n,), how many enter the backward's computed
    state of row i (the stored-prefix restarts of the causal scans: 2·(c(i) + 1), c(i) the last
    row of i's chunk) and the query rows [start, stop) whose terms reach key row j (again = stop:
    nothing is subtracted), as :func:`.rounding.tuple_gradient_rounding` reads them."""
    if causal:
        rows = np.arange(n)
        counts = [(rows + 1).astype(np.float64)] * len(lengths)
        spans = [2.0 * np.minimum((rows // chunk + 1) * chunk, n).astype(np.float64)] * len(lengths)
        stop = np.full(n, n, dtype=np.int64)
        return counts, spans, [(rows.astype(np.int64), stop, stop)] * len(lengths)
    counts = [np.full(n, float(m)) for m in lengths]
    return counts, counts, [(np.zeros(m, dtype=np.int64), np.full(m, n, dtype=np.int64),
                             np.full(m, n, dtype=np.int64)) for m in lengths]


def gradient_bounds(inputs, plan: PolyPlan, O: np.ndarray, dO: np.ndarray, lse: np.ndarray | None = None) -> tuple:
    """Certified entrywise bounds on |surrogate gradient − exact gradient| of validated n-way
    inputs (Q with one entry per output entry, keys and values per key entry, ``key_batch``,
    ``heads``): ``(dQ (Bq, n, d), dkeys, dvalues)`` (tuples of (Bk, m_a, ·)), float64, shaped like
    the caller's gradients.

    ``O`` (B, n, dv) is the computed float64 output, ``dO`` (B, n, dv) the upstream gradient and
    ``lse`` (B, n) the forward's log-normalisers. Per output entry, the polynomial's part is
    :func:`.plan.polynomial_gradient_bounds` (t = 2's argument with products over the other key
    sets), the rounding part :func:`.rounding.tuple_gradient_rounding` with the tuple counts of
    :func:`_backward_layout`. Grouped or broadcast heads then go through what the backward does in
    float64, as for t = 2 (:func:`.plan.gradient_bounds`): the G entries of a key group add their
    query summaries (or, causal, their key gradients), (G − 1)·⌈n/chunk⌉ more roundings per term,
    and the entries' bounds add (:func:`.plan.sum_key_groups`); a broadcast Q sums its copies'
    dQ (:func:`.plan.sum_query_copies`), each carrying a magnitude bound
    (:func:`.rounding.tuple_gradient_magnitudes`). For float32 the cast adds u = 2^-24 of the
    magnitude and 2^-150. Cost O((n + Σ m_a)·d·dv) per batch entry.
    """
    B, n, d, lengths, dv = _shape(inputs)
    heads, kb = inputs.heads, inputs.key_batch
    Q = np.asarray(inputs.Q, dtype=np.float64)
    kappa = np.asarray(plan.kappa).reshape(B, n)
    key_max = [column_abs_max(K)[kb] for K in inputs.keys]
    value_max = [column_abs_max(V)[kb] for V in inputs.values]
    coefficients = np.asarray(plan.coefficients).reshape(B, n, -1)
    radius, epsilon = np.asarray(plan.radius).reshape(B, n), np.asarray(plan.epsilon).reshape(B, n)
    rounding = _row_rounding(inputs, coefficients, radius, epsilon, plan.degree, lse=lse)
    ranges = product_ranges(*zip(*[tuple(x[kb] for x in column_extrema(V)) for V in inputs.values]))
    beta = BOUND_SLACK * (polynomial_output_bound(kappa, ranges)
                          + output_rounding(rounding, reduce(np.multiply, value_max), np.float64))
    polynomial, dZ_mass = polynomial_gradient_bounds(Q, dO, kappa, key_max, value_max, beta, O, lengths, inputs.scale)
    counts, spans, queries = _backward_layout(n, lengths, inputs.causal, plan.chunk_rows)
    shared = heads.shares_keys or heads.expands_query
    terms = dict(scale=inputs.scale, Q_abs=np.abs(Q), dO_abs=np.abs(dO), dZ_mass=dZ_mass, key_max=key_max,
                 value_max=value_max, counts=counts, queries=queries)
    dQ, dkeys, dvalues = tuple_gradient_rounding(
        rounding, **terms, spans=spans, roundings=tuple_backward_roundings(plan.degree, plan.rank, n, lengths, d, dv),
        output_dtype=np.float64 if shared else inputs.dtype, key_roundings=(heads.group - 1) * -(-n // plan.chunk_rows))
    narrow = np.dtype(inputs.dtype) != np.float64
    tiny = float(np.finfo(inputs.dtype).smallest_subnormal) / 2 if narrow else 0.0
    t = len(lengths)
    if not shared:
        bounds = [BOUND_SLACK * (a + b + tiny) for a, b in zip(polynomial, (dQ, *dkeys, *dvalues))]
        return bounds[0], tuple(bounds[1:1 + t]), tuple(bounds[1 + t:])
    rounded = (dQ, *dkeys, *dvalues)
    magnitude_q, magnitude_keys, magnitude_values = tuple_gradient_magnitudes(rounding, **terms)
    error = [a + b for a, b in zip(polynomial, rounded)]
    size = [a + b for a, b in zip((magnitude_q, *magnitude_keys, *magnitude_values), rounded)]
    sum_key_groups(heads, error, size)
    error[0], size[0] = sum_query_copies(heads, error[0], size[0])
    u_out = unit_roundoff(inputs.dtype) if narrow else 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        bounds = [BOUND_SLACK * (e + u_out * c + tiny) for e, c in zip(error, size)]
    return bounds[0], tuple(bounds[1:1 + t]), tuple(bounds[1 + t:])
