"""The training problem of the tensor-attention theory paper and its closed-form gradient.

Liang, Shi, Song and Zhou (2024), "Tensor Attention Training: Provably Efficient Learning of
Higher-order Transformers", study one tensor-attention layer with weights

    Q = A1 W_Q,  K1 = A2 W_K1,  K2 = A3 W_K2,  V1 = A4 W_V1,  V2 = A5 W_V2,

A1..A5 ∈ R^{n×d}, W ∈ R^{d×d}. The layer depends on the weights only through

    X = W_Q (W_K1 ⊘ W_K2)^T ∈ R^{d×d²},     Y = W_V1 ⊘ W_V2 ∈ R^{d²×d}

(:func:`build_X`, :func:`build_Y`; ``⊘`` the column-wise Khatri–Rao product, pair index
``pair(b, c) = b·d + c``), and the loss is

    Loss(X, Y) = ½ ‖ D^{-1} exp(A1 X (A2 ⊗ A3)^T / d) (A4 ⊗ A5) Y − E ‖_F²,

D the diagonal of row sums (a softmax over the n² key pairs of each query row). SPEC §3 gives

    f = D^{-1} A,  h = (A4 ⊗ A5) Y,  c = f h − E,  q = c h^T,  r_i = ⟨c_i, (f h)_i⟩,  p = f ∘ q − diag(r) f
    dLoss/dX = (1/d) A1^T p (A2 ⊗ A3),      dLoss/dY = (A4 ⊗ A5)^T f^T c.

The derivations are in docs/math/training_problem.rst.

method="exact" (module ``_exact``)
    Chunks of query rows, each n×n² row read as an n×n matrix so that every Kronecker product
    becomes a two-sided product; no n×n² matrix is formed. Time Θ(n³·d + n·d³) for each of
    :func:`loss` (≈ 2 n³ d flops), :func:`grad_Y` (≈ 2 n³ d) and :func:`grad_X` (≈ 4 n³ d) plus
    n³ exponentials; extra memory O(chunk·n² + n·d + d³), the chunk's n×n work tensors about
    4 MiB (one core's L2 here). A single row's tensors must fit in
    ``tattn_numba.config.MEMORY_BUDGET_BYTES`` or a ``ValueError`` is raised before allocating.
    Measured here (2 cores) n = 400, d = 16: loss ≈ 0.18 s, grad_X ≈ 0.35 s.

method="poly" (module ``_surrogate``)
    The layer *is* tensor attention with feature and value width d² at scale 1/d (the reduced
    attention): Q' = A1 X, K1'[j,(b,c)] = A2[j,b], K2'[j,(b,c)] = A3[j,c], V1', V2' likewise from
    A4, A5, and O' = attention(Q', K1', K2', V1', V2', scale=1/d) = f (A4 ⊗ A5). Then the output is
    O' Y, c = O' Y − E, dLoss/dY = O'^T c and dLoss/dX = A1^T dQ' for the upstream dO' = c Y^T,
    with O' and dQ' from the low-rank surrogate of SPEC §5. With g the degree and
    r = C(d² + g, g): forward (:func:`output`, :func:`loss`, :func:`grad_Y`) O(n·r·d²), gradient
    (:func:`grad_X`, :func:`weight_grads`) O(n·r·d⁴) time; memory O(r·d⁴ + chunk·r + n·d²). Almost
    linear in n, meant for small d; a rank whose memory passes ``memory_budget`` is refused
    with a ``ValueError``.

Options of method="poly" (keyword-only; all must be left ``None`` for method="exact"): exactly
one of ``tol`` (target certified bound on max |output_poly − output_exact| of the layer output
O' Y; the surrogate runs with attention-output tolerance tol/‖Y‖₁, ‖Y‖₁ the largest column sum
of |Y|) and ``degree``; ``family`` ("chebyshev", the default when None, or "taylor");
``memory_budget`` (bytes, default ``config.MEMORY_BUDGET_BYTES``). :func:`poly_certificate`
returns the surrogate's values with certified bounds on their distance to the exact ones
(module ``_certificate``; :func:`poly_weight_grad_bounds` maps them to the weight gradients).

All arithmetic is float64; results are returned in the input dtype.
"""

from __future__ import annotations

from ._api import grad_X, grad_Y, loss, output, weight_grads
from ._certificate import PolyCertificate, poly_certificate, poly_weight_grad_bounds
from ._common import WeightGrads
from ._surrogate import reduced_attention as _reduced_attention  # noqa: F401  (used by tests)
from ._weights import build_X, build_Y

__all__ = [
    "WeightGrads", "PolyCertificate", "build_X", "build_Y", "output", "loss", "grad_X", "grad_Y", "weight_grads",
    "poly_certificate", "poly_weight_grad_bounds",
]

# The public objects keep the module path they have always had (pickles, reprs, docs).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
