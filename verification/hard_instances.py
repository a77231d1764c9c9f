"""Planted Gap-3-MaxIP instances and their embeddings as tensor attention (SPEC §6).

Gap-3-MaxIP: given a, b, c ⊂ {0,1}^{d0} (n vectors each), tell whether some triple has
⟨a_i, b_j, c_k⟩ >= t (YES) or every triple is <= (1 − γ)t (NO). The embeddings give tensor-attention
inputs with entries of size Θ((log n)^{1/3}), where the polynomial surrogate refuses and the exact
kernel decides.

* :func:`gap_maxip_instance`: a random instance with a certified label (:class:`MaxIPInstance`).
* :func:`constant_gap_embedding` (embedding 1): attention inputs whose outputs decide the
  instance to constant accuracy (:class:`AttentionEmbedding`).
* :func:`half_max_embedding` (embedding 2): the same as the training problem of
  :mod:`tattn_numba.paper` with X(λ) = λ·S^T (:class:`GradientEmbedding`).

Every draw comes from ``numpy.random.default_rng(seed)``: the same arguments give the same arrays.
The reductions, the constructions and the proofs of the certified bounds are in
:doc:`/math/hard_instances` (docs/math/hard_instances.rst).

Examples
--------
>>> import tattn_numba as ta
>>> inst = gap_maxip_instance(16, "YES", seed=0)
>>> emb = constant_gap_embedding(inst)
>>> out = ta.attention(emb.Q, emb.K1, emb.K2, emb.V1, emb.V2, scale=emb.scale,
...                    method="exact")  # doctest: +SKIP
>>> emb.decide(out)  # doctest: +SKIP
'YES'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_BRUTE_FORCE_N", "LABELS", "MaxIPInstance", "AttentionEmbedding", "GradientEmbedding",
    "gap_maxip_instance", "triple_inner_products", "max_triple_inner_product",
    "default_d0", "default_t", "diagonal_embedding", "constant_gap_embedding", "half_max_embedding",
]

#: Largest n accepted: the gap is certified by brute force over all n³ triples, Θ(n³·d0) flops
#: (cost at the cap: docs/math/hard_instances.rst).
MAX_BRUTE_FORCE_N = 512

LABELS = ("YES", "NO")

#: Entries of the n³ inner-product tensor evaluated at once by the brute force (32 MiB of float64).
_CHUNK_ENTRIES = 2**22

#: Slack for floating-point comparisons of integer inner products with (1 − γ)t.
_INTEGER_SLACK = 1e-9


@dataclass(frozen=True, eq=False)
class MaxIPInstance:
    """A Gap-3-MaxIP instance with a certified label.

    Attributes
    ----------
    a, b, c : ndarray of int64, shape (n, d0)
        The three sets, entries in {0, 1}.
    t : int
        The YES threshold.
    gamma : float
        The gap: on NO instances every triple has ⟨a_i, b_j, c_k⟩ <= (1 − γ)t.
    rho : float
        Bernoulli parameter of the entries.
    label : {"YES", "NO"}
    planted : tuple of int (i, j, k) or None
        The planted triple (YES), with ⟨a_i, b_j, c_k⟩ = t exactly; None for NO.
    max_inner_product : int
        The true max over all n³ triples (t on YES, <= (1 − γ)t on NO), by brute force.
    seed : int
        Seed of the generator that drew the instance.
    """

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    t: int
    gamma: float
    rho: float
    label: str
    planted: tuple[int, int, int] | None
    max_inner_product: int
    seed: int

    @property
    def n(self) -> int:
        """Number of vectors in each set."""
        return int(self.a.shape[0])

    @property
    def d0(self) -> int:
        """Dimension of the vectors."""
        return int(self.a.shape[1])

    @property
    def no_threshold(self) -> int:
        """floor((1 − γ)t): the largest inner product a NO instance may have (they are integers)."""
        return int(math.floor((1.0 - self.gamma) * self.t + _INTEGER_SLACK))


@dataclass(frozen=True, eq=False)
class AttentionEmbedding:
    """Embedding 1 (constant gap): tensor-attention inputs whose outputs decide the instance.

    Attributes
    ----------
    Q : ndarray, shape (n, d̃)
    K1, K2 : ndarray, shape (2n, d̃)
    V1, V2 : ndarray, shape (2n, 1)
        1 on the n real rows, 0 on the n dummy rows (SPEC §6's zero padding to width d̃ is left
        out; it does not change this column of the output).
    scale : float
        s = 1/d̃.
    entry_bound : float
        B = σ = (β d̃)^{1/3}, the largest |entry| of Q, K1, K2.
    beta : float
        β = 2 ln(4n²)/(γt).
    e : int
        Number of baseline coordinates, round((1 − γ/2)t).
    yes_bound : float
        Certified lower bound on the planted row's output of a YES instance (>= 4/7 whenever
        (1 − γ/2)t is an integer).
    no_bound : float
        Certified upper bound on every output of a NO instance (<= 1/(4n²) likewise).
    threshold : float
        (yes_bound + no_bound)/2: the instance is declared YES iff some output is >= threshold,
        so any estimate with additive error below ``margin`` decides it.
    margin : float
        (yes_bound − no_bound)/2.
    instance : MaxIPInstance
    """

    Q: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    V1: np.ndarray
    V2: np.ndarray
    scale: float
    entry_bound: float
    beta: float
    e: int
    yes_bound: float
    no_bound: float
    threshold: float
    margin: float
    instance: MaxIPInstance

    @property
    def d_tilde(self) -> int:
        """Feature width d̃ = d0 + e."""
        return int(self.Q.shape[1])

    def decide(self, output: np.ndarray) -> str:
        """"YES" iff some entry of the attention ``output`` (shape (n, 1)) is >= ``threshold``."""
        return "YES" if float(np.max(output)) >= self.threshold else "NO"


@dataclass(frozen=True, eq=False)
class GradientEmbedding:
    """Embedding 2 (half of each row's logits at the maximum) as the training problem of the paper.

    The tensor attention (Q, K1, K2, V1, V2) at scale 1/d is written as ``tattn_numba.paper``'s
    loss with A1 = Q padded by zero query rows, A2 = K1, A3 = K2, A4 = V1, A5 = V2, E = 0,
    Y = I ⊘ I and X(λ) = λ·S^T with S = I ⊘ I. Derivation: :doc:`/math/hard_instances`.

    Attributes
    ----------
    Q : ndarray, shape (n, d)
        The real query rows, d = 2·d0.
    K1, K2 : ndarray, shape (m, d)
        m = n + n_dummy key rows (real rows first).
    A1, A2, A3, A4, A5 : ndarray, shape (m, d)
        Inputs of the paper's problem (A1 = Q followed by n_dummy zero rows).
    E : ndarray, shape (m, d)
        The target, zero.
    S : ndarray, shape (d², d)
        ``S[pair(b, c), a] = 1`` iff a = b = c (pair(b, c) = b·d + c), so that
        X(λ) = λ·S^T gives logits λ·⟨Q_i, K1_j1 ∘ K2_j2⟩/d.
    Y : ndarray, shape (d², d)
        The diagonal embedding I ⊘ I (equal to S): (A4 ⊗ A5) Y = A4 ⊘ A5.
    entry_bound : float
        B = σ = (β d)^{1/3}.
    beta : float
        β = 2 ln(4n²)/(γt), as in embedding 1.
    n_dummy : int
        ⌈(1 + √2) n⌉ dummy key rows in each of K1, K2.
    instance : MaxIPInstance
    """

    Q: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    A1: np.ndarray
    A2: np.ndarray
    A3: np.ndarray
    A4: np.ndarray
    A5: np.ndarray
    E: np.ndarray
    S: np.ndarray
    Y: np.ndarray
    entry_bound: float
    beta: float
    n_dummy: int
    instance: MaxIPInstance

    @property
    def scale(self) -> float:
        """Logit scale 1/d of the paper's loss."""
        return 1.0 / self.A1.shape[1]

    def X(self, lam: float) -> np.ndarray:
        """X(λ) = λ·S^T, shape (d, d²)."""
        return lam * self.S.T

    def paper_args(self, lam: float) -> tuple[np.ndarray, ...]:
        """``(A1, A2, A3, A4, A5, E, X(λ), Y)``, the positional arguments of ``paper.loss``/``grad_X``."""
        return (self.A1, self.A2, self.A3, self.A4, self.A5, self.E, self.X(lam), self.Y)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be >= {low}{upper}, got {value}")
    return int(value)


def _check_open_unit(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number in (0, 1), got {value!r}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {value}")
    return float(value)


# --------------------------------------------------------------------------------------------
# brute force
# --------------------------------------------------------------------------------------------


def triple_inner_products(a: np.ndarray, b: np.ndarray, c: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """``T[i, j, k] = ⟨a_i, b_j, c_k⟩`` for the query rows ``rows`` of ``a`` (dense, float64).

    Parameters
    ----------
    a, b, c : ndarray, shape (n, d0)
    rows : slice
        Rows of ``a`` to evaluate (all by default).

    Returns
    -------
    ndarray, shape (len(rows), n, n), float64
        Exact integers for 0/1 inputs (float64 holds them exactly).

    Notes
    -----
    One ``np.einsum("il,jl,kl->ijk", ...)`` with an optimised (BLAS) contraction path;
    Θ(rows·n²·d0) time and memory.
    """
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    return np.einsum("il,jl,kl->ijk", a[rows], b, c, optimize=True)


def max_triple_inner_product(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, exclude: tuple[int, int, int] | None = None,
) -> int:
    """max over all n³ triples of ⟨a_i, b_j, c_k⟩, optionally leaving one triple out.

    Parameters
    ----------
    a, b, c : ndarray, shape (n, d0), entries in {0, 1}
    exclude : tuple (i, j, k), optional
        A triple not taken into account (the planted one); -1 if no other triple exists.

    Returns
    -------
    int

    Notes
    -----
    Brute force in chunks of query rows (:func:`triple_inner_products`), Θ(n³·d0) time and
    O(chunk·n²) memory, about 2^22 entries (32 MiB) per chunk.
    """
    n = a.shape[0]
    chunk = max(1, _CHUNK_ENTRIES // (n * n))
    best = -1
    for start in range(0, n, chunk):
        block = triple_inner_products(a, b, c, slice(start, start + chunk))
        if exclude is not None and start <= exclude[0] < start + chunk:
            i, j, k = exclude
            block[i - start, j, k] = -1.0
        best = max(best, int(round(float(block.max()))))
    return best


# --------------------------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------------------------


def default_d0(n: int, c: float) -> int:
    """d0 = ⌈c·log2 n⌉ (at least 1)."""
    return max(1, math.ceil(c * math.log2(n)))


def default_t(d0: int, gamma: float) -> int:
    """The largest t <= 0.8·d0 for which (1 − γ/2)t is an integer (t = 4k for γ = 1/2), else ⌊0.8·d0⌋.

    Why these choices: :doc:`/math/hard_instances` ("Default parameters").
    """
    top = max(1, math.floor(0.8 * d0))
    for t in range(top, 0, -1):
        half = (1.0 - gamma / 2.0) * t
        if abs(half - round(half)) < _INTEGER_SLACK:
            return t
    return top


def gap_maxip_instance(
    n: int, label: str, *, d0: int | None = None, t: int | None = None, gamma: float = 0.5,
    rho: float = 0.15, c: float = 2.0, seed: int = 0, max_tries: int = 200,
) -> MaxIPInstance:
    """Draw a Gap-3-MaxIP instance with a certified YES/NO label (SPEC §6).

    Entries are Bernoulli(ρ); a YES instance has one planted triple with inner product exactly t.
    Draws in which any other triple exceeds (1 − γ)t are redrawn from the same generator. The
    planting and the brute-force certificate: :doc:`/math/hard_instances`.

    Parameters
    ----------
    n : int
        Vectors per set, 2 <= n <= :data:`MAX_BRUTE_FORCE_N`.
    label : {"YES", "NO"}
    d0 : int, optional
        Dimension; default ⌈c·log2 n⌉ (:func:`default_d0`).
    t : int, optional
        YES threshold, 1 <= t <= d0; default :func:`default_t` (about 0.8·d0).
    gamma : float
        Gap, in (0, 1).
    rho : float
        Bernoulli parameter, in (0, 1).
    c : float
        Constant of the default d0, > 0.
    seed : int
        Seed of ``numpy.random.default_rng``.
    max_tries : int
        Draws before giving up.

    Returns
    -------
    MaxIPInstance

    Raises
    ------
    ValueError
        A parameter out of range (the message names it), or no draw among ``max_tries`` had the
        gap (lower ``rho``, raise ``t`` or ``d0``).

    Notes
    -----
    Each draw costs the brute-force check, Θ(n³·d0) flops and O(2^22) memory
    (:func:`max_triple_inner_product`); n is capped at :data:`MAX_BRUTE_FORCE_N` for that reason.

    Examples
    --------
    >>> inst = gap_maxip_instance(16, "NO", seed=1)
    >>> inst.max_inner_product <= inst.no_threshold
    True
    """
    n = _check_int(n, "n", 2, MAX_BRUTE_FORCE_N)
    if label not in LABELS:
        raise ValueError(f"label must be one of {list(LABELS)}, got {label!r}")
    gamma = _check_open_unit(gamma, "gamma")
    rho = _check_open_unit(rho, "rho")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
        raise ValueError(f"c must be a positive number, got {c!r}")
    d0 = default_d0(n, c) if d0 is None else _check_int(d0, "d0", 1)
    t = default_t(d0, gamma) if t is None else _check_int(t, "t", 1)
    if t > d0:
        raise ValueError(f"t must be <= d0 = {d0}, got t = {t}")
    seed = _check_int(seed, "seed", 0)
    max_tries = _check_int(max_tries, "max_tries", 1)
    limit = math.floor((1.0 - gamma) * t + _INTEGER_SLACK)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        a, b, c_ = ((rng.random((n, d0)) < rho).astype(np.int64) for _ in range(3))
        planted = _plant(a, b, c_, t, rng) if label == "YES" else None
        others = max_triple_inner_product(a, b, c_, exclude=planted)
        if others <= limit:
            best = t if planted is not None else others
            return MaxIPInstance(a, b, c_, t, gamma, rho, label, planted, best, seed)
    raise ValueError(
        f"no draw among max_tries = {max_tries} kept every {'other ' if label == 'YES' else ''}triple "
        f"<= (1 - gamma)·t = {limit} (n = {n}, d0 = {d0}, t = {t}, rho = {rho}); lower rho or raise t or d0"
    )


def _plant(a: np.ndarray, b: np.ndarray, c: np.ndarray, t: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """Plant a triple with inner product exactly t (in place); return its indices."""
    n, d0 = a.shape
    i, j, k = (int(x) for x in rng.integers(0, n, size=3))
    ones = rng.choice(d0, size=t, replace=False)
    a[i, ones] = 1
    b[j, ones] = 1
    c[k, ones] = 1
    rest = np.setdiff1d(np.arange(d0), ones)
    c[k, rest] *= 1 - a[i, rest] * b[j, rest]
    return i, j, k


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------


def _beta(instance: MaxIPInstance) -> float:
    """β = 2 ln(4n²)/(γt)."""
    return 2.0 * math.log(4.0 * instance.n**2) / (instance.gamma * instance.t)


def _stack_keys(real: np.ndarray, n_dummy: int, e: int, sigma: float) -> np.ndarray:
    """σ·[x_j, 0_e] for the real rows, then n_dummy rows σ·[0_{d0}, 1_e]."""
    n, d0 = real.shape
    keys = np.zeros((n + n_dummy, d0 + e))
    keys[:n, :d0] = real
    keys[n:, d0:] = 1.0
    return sigma * keys


def _real_indicator(n: int, n_dummy: int, width: int) -> np.ndarray:
    """Values: column 0 is 1 on the n real rows and 0 on the dummy rows; other columns 0."""
    values = np.zeros((n + n_dummy, width))
    values[:n, 0] = 1.0
    return values


def constant_gap_embedding(instance: MaxIPInstance) -> AttentionEmbedding:
    """Embedding 1 of SPEC §6: constant-accuracy attention outputs decide the instance.

    With e = round((1 − γ/2)t), β = 2 ln(4n²)/(γt), d̃ = d0 + e and σ = (β d̃)^{1/3}:
    Q[i] = σ·[a_i, 1_e]; K1 = σ·[b_j, 0_e] for j < n, then n dummy rows σ·[0_{d0}, 1_e] (K2 likewise
    with c); V1 = V2 = 1 on real rows, 0 on dummy rows; scale 1/d̃. Feed the five arrays and
    ``scale`` to ``tattn_numba.attention`` and pass its output to :meth:`AttentionEmbedding.decide`.
    The logits, the bounds and their proof: :doc:`/math/hard_instances`.

    Parameters
    ----------
    instance : MaxIPInstance

    Returns
    -------
    AttentionEmbedding
        Q (n, d̃), K1, K2 (2n, d̃), V1, V2 (2n, 1), scale 1/d̃, B = σ, β, e, the bounds and
        the decision threshold.

    Raises
    ------
    ValueError
        e = 0, or yes_bound <= no_bound (choose t, gamma with (1 − γ/2)t closer to an integer).

    Notes
    -----
    Logits reach β·t = 2 ln(4n²)/γ (about 33 for n = 32, γ = 1/2); B = Θ((log n)^{1/3}).
    Time and memory O(n·d̃).
    """
    n, d0, t = instance.n, instance.d0, instance.t
    e = int(round((1.0 - instance.gamma / 2.0) * t))
    if e < 1:
        raise ValueError(f"e = round((1 - gamma/2)·t) is 0 for t = {t}, gamma = {instance.gamma}; raise t")
    beta = _beta(instance)
    d_tilde = d0 + e
    sigma = (beta * d_tilde) ** (1.0 / 3.0)
    no_bound = math.exp(-beta * (e - instance.no_threshold))
    yes_bound = 1.0 / (1.0 + n**2 * math.exp(-beta * (t - e)) + 2.0 * n**2 * math.exp(-beta * t))
    if yes_bound <= no_bound:
        raise ValueError(
            f"with e = {e} the certified YES bound {yes_bound:.3g} does not exceed the NO bound {no_bound:.3g}; "
            f"choose t, gamma with (1 - gamma/2)·t an integer (t = {t}, gamma = {instance.gamma})"
        )
    Q = np.zeros((n, d_tilde))
    Q[:, :d0] = instance.a
    Q[:, d0:] = 1.0
    values = _real_indicator(n, n, 1)
    return AttentionEmbedding(
        Q=sigma * Q, K1=_stack_keys(instance.b, n, e, sigma), K2=_stack_keys(instance.c, n, e, sigma),
        V1=values, V2=values.copy(), scale=1.0 / d_tilde, entry_bound=sigma, beta=beta, e=e,
        yes_bound=yes_bound, no_bound=no_bound, threshold=(yes_bound + no_bound) / 2.0,
        margin=(yes_bound - no_bound) / 2.0, instance=instance,
    )


def diagonal_embedding(d: int) -> np.ndarray:
    """I ⊘ I, shape (d², d): entry [pair(b, c), a] = 1 iff a = b = c, pair(b, c) = b·d + c."""
    out = np.zeros((d * d, d))
    idx = np.arange(d)
    out[idx * d + idx, idx] = 1.0
    return out


def half_max_embedding(instance: MaxIPInstance) -> GradientEmbedding:
    """Embedding 2 of SPEC §6: e = d0 and ⌈(1 + √2)n⌉ dummy rows, as the paper's training problem.

    The construction of :func:`constant_gap_embedding` with e = d0 (d = 2·d0), N = ⌈(1 + √2)n⌉
    dummy key rows and σ = (β d)^{1/3}, so that at least half of each real row's logits sit at the
    row maximum; then the paper's inputs A1 = [Q; 0], A2 = K1, A3 = K2, A4 = V1, A5 = V2 (width d),
    E = 0, Y = S = I ⊘ I. ``paper.loss(*emb.paper_args(lam))`` is ½ Σ_i O_i(λ)², O_i(λ) the
    softmax mass of row i of A1 on real–real pairs at logits scaled by λ, and Loss(1) − Loss(0) =
    ∫₀¹ ⟨``paper.grad_X(*emb.paper_args(λ))``, S^T⟩ dλ. The construction and the identity:
    :doc:`/math/hard_instances`.

    Parameters
    ----------
    instance : MaxIPInstance

    Returns
    -------
    GradientEmbedding
        Q (n, d), K1, K2, A1…A5, E (n + N, d), S, Y (d², d), B = σ, β, N.

    Notes
    -----
    Time and memory O((n + N)·d + d³) (S and Y are d²×d).
    """
    n, d0 = instance.n, instance.d0
    n_dummy = math.ceil((1.0 + math.sqrt(2.0)) * n)
    d = 2 * d0
    beta = _beta(instance)
    sigma = (beta * d) ** (1.0 / 3.0)
    Q = np.zeros((n, d))
    Q[:, :d0] = instance.a
    Q[:, d0:] = 1.0
    Q *= sigma
    K1 = _stack_keys(instance.b, n_dummy, d0, sigma)
    K2 = _stack_keys(instance.c, n_dummy, d0, sigma)
    A1 = np.zeros((n + n_dummy, d))
    A1[:n] = Q
    values = _real_indicator(n, n_dummy, d)
    S = diagonal_embedding(d)
    return GradientEmbedding(
        Q=Q, K1=K1, K2=K2, A1=A1, A2=K1, A3=K2, A4=values, A5=values.copy(), E=np.zeros((n + n_dummy, d)),
        S=S, Y=S.copy(), entry_bound=sigma, beta=beta, n_dummy=n_dummy, instance=instance,
    )
