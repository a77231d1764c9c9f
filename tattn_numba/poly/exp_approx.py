r"""Polynomial approximations of :math:`e^x` on :math:`[-R, R]` with certified relative error bounds.

This module supplies the scalar polynomial behind the low-rank surrogate of SPEC §5 (Alman–Song 2023
for the forward pass, Liang–Shi–Song–Zhou 2024 for the gradient): a polynomial :math:`P` of degree
:math:`g` with :math:`|P(x) - e^x| \le \varepsilon\, e^x` for :math:`|x| \le R`, which the multinomial
theorem then expands into rank-:math:`\binom{d+g}{g}` features.

Scaled variable
---------------
Everything is expressed in the scaled variable :math:`y = x / R \in [-1, 1]`:

.. math:: P(x) = \sum_{t=0}^{g} a_t\, y^t, \qquad y = x / R,

so the features stay balanced for high degrees. At :math:`R = 0` the only point is :math:`x = 0` and
:math:`P \equiv 1` (``a = [1, 0, ..., 0]``); evaluate it at any :math:`|y| \le 1` (e.g. :math:`y = 0`).
Each row may have its own radius :math:`R_i` (the per-row polynomials of SPEC §5): every public
function accepts a 1-D array of radii and is vectorised over it, with no Python loop over rows.

How to call it
--------------
::

    from numpy.polynomial import polynomial as Pm
    a = exp_coefficients("chebyshev", 12, 2.0)          # shape (13,); (n, 13) for n radii
    eps = relative_error_bound("chebyshev", 12, 2.0)    # certified sup |P̂(x) − e^x| / e^x
    p = Pm.polyval(x / 2.0, a)                          # P̂(x) ≈ e^x for |x| <= 2
    g = min_degree("chebyshev", radii, 1e-8)            # smallest degree per radius

Families
--------
``"taylor"``
    :math:`a_t = R^t / t!` (the truncated Taylor series of :math:`e^{Ry}`).
``"chebyshev"``
    The interpolant of :math:`e^{Ry}` at the :math:`g+1` Chebyshev points of the first kind
    :math:`y_j = \cos((2j+1)\pi / (2g+2))`, in monomial form. It needs roughly a third fewer degrees
    than Taylor for the same tolerance when :math:`R \gtrsim 1`. Its coefficients are computed from
    exact per-degree tables (:mod:`tattn_numba.poly._chebyshev_tables`), not from node values.

Each family is a :class:`Family` object (:data:`TAYLOR`, :data:`CHEBYSHEV`) registered in
:data:`FAMILIES`, which is the tuple of the names every ``family`` argument accepts and also maps a
name to its object (``FAMILIES["chebyshev"] is CHEBYSHEV``). A family supplies its truncation order,
its coefficients from the powers :math:`R^s/s!`, the log of its exact-arithmetic approximation error
bound and the float64 "high part" of the rounding bound; this module's drivers do the validation,
the chunking over rows and the sum of the parts. A new family is a subclass, with its bound derived
in the math notes, added to :data:`FAMILIES`.

The certified bound
-------------------
:func:`relative_error_bound` returns :math:`B \ge \sup_{|x| \le R} |\hat P(x) - e^x| / e^x` where
:math:`\hat P(x)` is the float64 result of Horner's rule (e.g. ``numpy.polynomial.polynomial.polyval``)
applied to the coefficients returned by :func:`exp_coefficients` at :math:`\hat y = \mathrm{fl}(x/R)`:

.. math:: B = (1 + 10^{-10})\,\bigl[E_{\rm approx} + E_{\rm trunc} + E_{\rm fp}
               + 10^{-290} e^{R}\bigr],

the exact-arithmetic approximation error, the Chebyshev tail dropped beyond order :math:`S`
(below :math:`2^{-64}`), the rounding of the coefficients and of Horner's rule, and underflow.
The rounding part is a floor of about :math:`5g\,u\,e^{2R}` (:math:`u = 2^{-53}`): nothing is
certified below 1 beyond :math:`R \approx 16`. The bound is finite up to about :math:`R = 300`
(Chebyshev) or :math:`370` (Taylor) and ``inf`` beyond, and for :math:`R >` :data:`MAX_RADIUS`;
never NaN. The derivations, with measured tightness, are in :doc:`/math/exp_polynomials`
(docs/math/exp_polynomials.rst).

References
----------
Alman, J., Song, Z. (2023). How to capture higher-order correlations? Generalizing matrix softmax
attention to Kronecker computation. Aggarwal, A., Alman, J. (2022). Optimal-degree polynomial
approximations for exponentials and Gaussian kernel density estimation. Higham, N. J. (2002).
Accuracy and Stability of Numerical Algorithms, 2nd ed. Trefethen, L. N. (2013). Approximation
Theory and Approximation Practice. Rivlin, T. J. (1974). The Chebyshev Polynomials. Abramowitz, M.,
Stegun, I. A. (1964). Handbook of Mathematical Functions, §9.6. Mason, J. C., Handscomb, D. C. (2003).
Chebyshev Polynomials.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._chebyshev_tables import _cheb_table
from .rounding import gamma as _gamma

__all__ = [
    "FAMILIES",
    "MAX_DEGREE",
    "MAX_RADIUS",
    "exp_coefficients",
    "min_degree",
    "relative_error_bound",
]

#: Largest supported degree (the exact Chebyshev tables grow as O(degree · S) big integers).
MAX_DEGREE = 256

#: Largest radius for which coefficients are returned and bounds are finite (e^R must fit in float64).
MAX_RADIUS = 700.0

_LOG_TRUNC_TARGET = -64.0 * math.log(2.0)  # relative size allowed for the dropped Chebyshev tail
_UNDERFLOW_SLACK = 1e-290  # absolute slack covering subnormal intermediates
_SAFETY = 1.0 + 1e-10  # covers the rounding in evaluating the bound itself
_CHUNK_ELEMENTS = 1 << 22  # rows × (S + 1) per chunk: 32 MiB of float64 work space


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _check_family(family) -> str:
    if not isinstance(family, str):
        raise TypeError(f"family must be a str, one of {FAMILIES}, got {type(family).__name__}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return family


def _check_degree(degree, name: str = "degree") -> int:
    if isinstance(degree, (bool, np.bool_)) or not isinstance(degree, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a non-negative integer, got {degree!r} ({type(degree).__name__})")
    degree = int(degree)
    if degree < 0:
        raise ValueError(f"{name} must be >= 0, got {degree}")
    if degree > MAX_DEGREE:
        raise ValueError(f"{name} must be <= {MAX_DEGREE} (MAX_DEGREE), got {degree}")
    return degree


def _as_radius(radius) -> tuple[np.ndarray, bool]:
    """Return ``(radii as a float64 1-D array, whether the input was a scalar)``."""
    if isinstance(radius, (bool, np.bool_)):
        raise TypeError("radius must be a real number or a 1-D array of real numbers, got a bool")
    try:
        arr = np.asarray(radius)
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read is a type error
        raise TypeError(f"radius must be a real number or a 1-D array, got {type(radius).__name__}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"radius must be real (integer or float), got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"radius must be a scalar or a 1-D array, got shape {arr.shape}")
    scalar = arr.ndim == 0
    arr = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError("radius contains NaN or Inf; every radius must be finite")
    if (arr < 0).any():
        raise ValueError(f"radius must be >= 0, got minimum {arr.min()!r}")
    return arr, scalar


def _check_tol(tol) -> float:
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"tol must be a real number, got {type(tol).__name__}")
    tol = float(tol)
    if not math.isfinite(tol) or tol <= 0.0:
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    return tol


# --------------------------------------------------------------------------------------------------
# per-row building blocks (all elementwise: a row's result never depends on the other rows)
# --------------------------------------------------------------------------------------------------
def _log_lebesgue(degree: int) -> float:
    return math.log(2.0 + math.log(degree + 1.0))


def _log_exp_tail(R: np.ndarray, logR: np.ndarray, k: int) -> np.ndarray:
    """log of an upper bound on sum_{s>=k} R^s/s! (Lagrange remainder or geometric ratio)."""
    base = k * logR - math.lgamma(k + 1.0)
    lagrange = base + R
    ratio = R / (k + 1.0)
    safe = np.where(ratio < 1.0, ratio, 0.0)
    geometric = np.where(ratio < 1.0, base - np.log1p(-safe), np.inf)
    return np.minimum(lagrange, geometric)



def _powers(R: np.ndarray, S: np.ndarray, smax: int) -> np.ndarray:
    """V[i, s] = R_i^s / s! by the recurrence V_s = V_{s-1}·(R/s), zeroed for s > S_i."""
    V = np.empty((R.size, smax + 1))
    V[:, 0] = 1.0
    with np.errstate(under="ignore", over="ignore"):
        for s in range(1, smax + 1):
            np.multiply(V[:, s - 1], R / s, out=V[:, s])
    V[np.arange(smax + 1)[None, :] > S[:, None]] = 0.0
    return V


def _chunks(n: int, smax: int):
    step = max(1, _CHUNK_ELEMENTS // (smax + 1))
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))



def _log_bessel_series(R: np.ndarray, N: int) -> np.ndarray:
    """Upper bound on log Σ_j q_j, q_j = (R²/4)^j N! / (j! (N+j)!), so that I_N(R) = (R/2)^N/N! · Σ_j q_j.

    Summed term by term (positive terms) until the ratio ρ_j = (R²/4)/((j+1)(j+N+1)) of the next
    term is ≤ 1/2 and the current term is below 2^-60 of the sum; the rest is bounded by the
    geometric tail q_J / (1 − ρ_J) (the ratios decrease in j). Relative rounding γ_{6J} (J < 10^4)
    is below the final factor 1 + 10^-10.
    """
    out = np.empty(R.size)
    z = 0.25 * R * R
    q = np.ones(R.size)
    acc = np.zeros(R.size)
    rows = np.arange(R.size)
    j = 0
    while rows.size:
        rho = z[rows] / ((j + 1.0) * (j + N + 1.0))
        done = (rho <= 0.5) & (q <= 2.0**-60 * (acc + q))
        if done.any():
            r = rows[done]
            out[r] = np.log(acc[done] + q[done] / (1.0 - rho[done]))
            keep = ~done
            rows, q, acc, rho = rows[keep], q[keep], acc[keep], rho[keep]
        acc = acc + q
        q = q * rho
        j += 1
    return out



# --------------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    r"""A polynomial family of :math:`e^{Ry}` on :math:`[-1, 1]`, in monomial form.

    What the drivers of this module need to know about a family; every method works on a batch of
    rows and a row's result never depends on the other rows. The defaults describe a family whose
    coefficients are the powers :math:`V_t = R^t/t!` themselves (truncation order :math:`S = g`, no
    dropped tail, no high part); a subclass overrides what differs and must implement
    :meth:`log_approx_error`. The certified bound of each method is derived in
    :doc:`/math/exp_polynomials`.

    Parameters
    ----------
    name : str
        The ``family`` argument that selects it (its key in :data:`FAMILIES`).
    """

    name: str

    def truncation_order(self, degree: int, R: np.ndarray) -> np.ndarray:
        """Per-row order ``S >= degree`` of the last power :math:`R^s/s!` used (int64, shape of ``R``)."""
        return np.full(R.shape, degree, dtype=np.int64)

    def coefficients(self, degree: int, V: np.ndarray, smax: int) -> np.ndarray:
        """Coefficients ``a`` (rows, degree + 1) from ``V[i, s]`` = :math:`R_i^s/s!` (0 for s > S_i, s <= smax)."""
        return V[:, : degree + 1].copy()

    def log_approx_error(self, degree: int, R: np.ndarray, sharp: bool = True) -> np.ndarray:
        r"""log of :math:`E_{\rm approx}`, the relative error of the exact polynomial (exact arithmetic).

        With ``sharp=False`` the result may be any cheap *lower* bound of it (used by
        :func:`min_degree` to skip hopeless degrees).
        """
        raise NotImplementedError(f"family {self.name!r} defines no approximation error bound")

    def truncation_error(self, degree: int, R: np.ndarray, S: np.ndarray) -> np.ndarray:
        r""":math:`E_{\rm trunc}` per row: the bound on the powers :math:`s > S` left out (0 by default)."""
        return np.zeros(R.size)

    def high_part(self, degree: int, V: np.ndarray, smax: int) -> np.ndarray:
        r""":math:`\hat H_{\rm high}` per row, the float64 weight of the powers beyond the degree (0 by default)."""
        return np.zeros(V.shape[0])


class _Taylor(Family):
    r"""``"taylor"``: :math:`a_t = R^t/t!`, error by the Lagrange remainder :math:`R^N e^R / N!`."""

    def log_approx_error(self, degree: int, R: np.ndarray, sharp: bool = True) -> np.ndarray:
        N = degree + 1
        lgN = math.lgamma(N + 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logR = np.log(R)
            return N * logR + R - lgN


class _Chebyshev(Family):
    r"""``"chebyshev"``: the interpolant at the :math:`g+1` Chebyshev points of the first kind.

    :math:`a_t = R^t/t! + \sum_{g < s \le S}(R^s/s!)\,G_{t,s}` with the exact tables of
    :mod:`tattn_numba.poly._chebyshev_tables`; :math:`S` makes the dropped tail below :math:`2^{-64}`.
    """

    def truncation_order(self, degree: int, R: np.ndarray) -> np.ndarray:
        """Per-row S >= degree: the smallest S with E_trunc <= 2^-64 (``_LOG_TRUNC_TARGET``)."""
        S = np.full(R.shape, degree, dtype=np.int64)
        todo = np.flatnonzero(R > 0)
        s = degree
        logL = _log_lebesgue(degree)
        while todo.size:
            r = R[todo]
            lt = logL + r + _log_exp_tail(r, np.log(r), s + 1)
            done = lt <= _LOG_TRUNC_TARGET
            S[todo[done]] = s
            todo = todo[~done]
            s += 1
        return S

    def coefficients(self, degree: int, V: np.ndarray, smax: int) -> np.ndarray:
        if smax <= degree:
            return super().coefficients(degree, V, smax)
        G, _ = _cheb_table(degree).get(smax)
        corr = np.zeros((V.shape[0], degree + 1))
        # fixed order, highest power first (smallest terms first): rows never interact, so
        # scalar and vector calls agree bit for bit; the leading V_t is added last, once
        for s in range(smax, degree, -1):
            corr += V[:, s : s + 1] * G[:, s]
        return V[:, : degree + 1] + corr

    def log_approx_error(self, degree: int, R: np.ndarray, sharp: bool = True) -> np.ndarray:
        """Minimum of the classical remainder and two Bessel-tail bounds.

        With ``sharp=False`` the series for I_N is replaced by its first term, which gives a cheap
        O(1) *lower* bound of E_approx (the series sum is >= 1).
        """
        N = degree + 1
        lgN = math.lgamma(N + 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logR = np.log(R)
            classical = 2.0 * R + N * logR - degree * math.log(2.0) - lgN
            log_lead = N * (logR - math.log(2.0)) - lgN  # log (R/2)^N / N!
            # crude closed form: I_k ≤ (R/2)^k/k! · φ_k, Σ_{k≥N} (R/2)^k/k! ≤ (R/2)^N/N! · ψ_N
            log_phi = np.minimum(R * R / (4.0 * N + 4.0), R)
            ratio = R / (2.0 * N + 2.0)
            safe = np.where(ratio < 1.0, ratio, 0.0)
            log_psi = np.minimum(0.5 * R, np.where(ratio < 1.0, -np.log1p(-safe), np.inf))
            crude = math.log(4.0) + R + log_phi + log_psi + log_lead
            # sharp: I_N summed exactly (series), Σ_{k≥N} I_k ≤ I_N / (1 − R/(2N+2)) since termwise
            # I_{k+1}/I_k ≤ R/(2k+2)
            m = (ratio < 1.0) & (R > 0)
            if sharp:
                tail = np.full(R.shape, np.inf)
                if m.any():
                    tail[m] = (math.log(4.0) + R[m] + log_lead[m] + _log_bessel_series(R[m], N)
                               - np.log1p(-safe[m]))
            else:
                tail = np.where(m, math.log(4.0) + R + log_lead, np.inf)
            best = np.minimum(classical, np.minimum(crude, tail))
        return np.where(R > 0, best, -np.inf)

    def truncation_error(self, degree: int, R: np.ndarray, S: np.ndarray) -> np.ndarray:
        """Lebesgue constant times the exponential-series tail beyond S, relative (times e^R)."""
        pos = R > 0
        with np.errstate(divide="ignore"):
            lr = np.log(R)
        tr = np.zeros(R.size)
        for k in np.unique(S[pos]):
            m = pos & (S == k)
            tr[m] = np.exp(_log_lebesgue(degree) + R[m] + _log_exp_tail(R[m], lr[m], int(k) + 1))
        return tr

    def high_part(self, degree: int, V: np.ndarray, smax: int) -> np.ndarray:
        h = np.zeros(V.shape[0])
        if smax > degree:
            _, nrm = _cheb_table(degree).get(smax)
            for s in range(smax, degree, -1):
                h += V[:, s] * nrm[s]
        return h


#: The truncated Taylor series.
TAYLOR = _Taylor("taylor")

#: The Chebyshev interpolant (first-kind points).
CHEBYSHEV = _Chebyshev("chebyshev")


class _FamilyRegistry(tuple):
    """The registered family names, in order (a plain tuple of str for iteration, ``in``, ``len``,
    indexing by position, comparison and ``repr``), that also maps a name to its :class:`Family`:
    ``FAMILIES["chebyshev"]``, ``.get``, ``.keys``, ``.values``, ``.items``."""

    def __new__(cls, families):
        families = tuple(families)
        names = tuple(f.name for f in families)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate family names in {names}")
        self = super().__new__(cls, names)
        self._by_name = dict(zip(names, families))
        return self

    def __getnewargs__(self):
        return (tuple(self._by_name.values()),)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._by_name[key]
        return tuple.__getitem__(self, key)

    def get(self, name, default=None):
        return self._by_name.get(name, default) if isinstance(name, str) else default

    def keys(self):
        return self._by_name.keys()

    def values(self):
        return self._by_name.values()

    def items(self):
        return self._by_name.items()


#: Polynomial families understood by every function of this module: the tuple of their names, which
#: also maps a name to its :class:`Family` (``FAMILIES["taylor"] is TAYLOR``).
FAMILIES = _FamilyRegistry((TAYLOR, CHEBYSHEV))


# --------------------------------------------------------------------------------------------------
# drivers (vectorised over rows, in chunks)
# --------------------------------------------------------------------------------------------------
def _coefficients_rows(family: Family, degree: int, R: np.ndarray) -> np.ndarray:
    out = np.empty((R.size, degree + 1))
    if R.size == 0:
        return out
    S_all = family.truncation_order(degree, R)
    for sl in _chunks(R.size, int(S_all.max())):
        S = S_all[sl]
        smax = int(S.max())
        V = _powers(R[sl], S, smax)
        out[sl] = family.coefficients(degree, V, smax)
    return out


class _BoundParts(NamedTuple):
    approx: np.ndarray
    trunc: np.ndarray
    fp: np.ndarray
    total: np.ndarray


def _bound_rows(family: Family, degree: int, R: np.ndarray) -> _BoundParts:
    """The three parts of the certified relative bound and their (inflated) sum, per row."""
    n = R.size
    approx = np.full(n, np.inf)
    trunc = np.zeros(n)
    fp = np.full(n, np.inf)
    ok = R <= MAX_RADIUS
    idx = np.flatnonzero(ok)
    if idx.size:
        r = R[idx]
        with np.errstate(over="ignore"):
            approx[idx] = np.exp(family.log_approx_error(degree, r))
        S_all = family.truncation_order(degree, r)
        trunc[idx] = family.truncation_error(degree, r, S_all)
        H_low = np.empty(r.size)
        H_high = np.zeros(r.size)
        with np.errstate(over="ignore", invalid="ignore"):
            for sl in _chunks(r.size, int(S_all.max())):
                S = S_all[sl]
                smax = int(S.max())
                V = _powers(r[sl], S, smax)
                h = V[:, 0].copy()
                for s in range(1, degree + 1):
                    h += V[:, s]
                H_low[sl] = h
                H_high[sl] = family.high_part(degree, V, smax)
            # E_fp = e^R [γ_{5g+1}(1+γ_{6g+2}) Ĥ_low + γ_{3S+3g+3}(1+γ_{6S+4}) Ĥ_high] (docs/math/exp_polynomials.rst)
            fp_low = _gamma(5.0 * degree + 1.0) * (1.0 + _gamma(6.0 * degree + 2.0))
            fp_high = _gamma(3.0 * S_all + 3.0 * degree + 3.0) * (1.0 + _gamma(6.0 * S_all + 4.0))
            fp[idx] = (fp_low * H_low + fp_high * H_high) * np.exp(r)
    with np.errstate(over="ignore", invalid="ignore"):
        slack = np.where(ok, _UNDERFLOW_SLACK * np.exp(np.minimum(R, MAX_RADIUS)), np.inf)
        total = _SAFETY * (approx + trunc + fp + slack)
    total = np.where(np.isnan(total), np.inf, total)
    return _BoundParts(approx, trunc, fp, total)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def exp_coefficients(family: str, degree: int, radius) -> np.ndarray:
    r"""Monomial coefficients, in the scaled variable :math:`y = x/R`, of a polynomial close to :math:`e^x`.

    Parameters
    ----------
    family : {"taylor", "chebyshev"}
        ``"taylor"``: :math:`a_t = R^t/t!`. ``"chebyshev"``: the interpolant of :math:`e^{Ry}` at the
        ``degree + 1`` Chebyshev points of the first kind on :math:`[-1, 1]` (to within a dropped
        tail below :math:`2^{-64}` relative, see :doc:`/math/exp_polynomials`).
    degree : int
        Polynomial degree :math:`g`, ``0 <= degree <= MAX_DEGREE``.
    radius : float or ndarray of shape (n,)
        Half-width :math:`R \ge 0` of the interval :math:`[-R, R]`, one per row; finite and at most
        :data:`MAX_RADIUS`.

    Returns
    -------
    a : ndarray of float64, shape (degree + 1,) for a scalar radius, (n, degree + 1) for an array
        :math:`P(x) = \sum_t a_t (x/R)^t \approx e^x` on :math:`[-R, R]`; :math:`R = 0` gives
        ``[1, 0, ..., 0]``. The error is bounded by :func:`relative_error_bound`.

    Raises
    ------
    TypeError, ValueError
        Unknown ``family``, negative / non-integer / too large ``degree``, negative, non-finite,
        non-real or too large (> 700) ``radius``, or a radius array of more than one dimension.

    Notes
    -----
    Cost per row: O(g·S) flops for Chebyshev, with the dropped-tail order
    :math:`S \approx \max(g, eR + 25)` (21 at :math:`R = 1`, 55 at :math:`R = 8`, 247 at
    :math:`R = 60`), and O(g) for Taylor; vectorised over rows in chunks of about 32 MiB. Measured
    here (2 cores, shared): :math:`10^6` radii in [0, 8], degree 20: 2.6 s Chebyshev, 0.65 s Taylor.
    The exact per-degree table of :math:`\mathcal I_g[y^s]` is built once (5 ms for
    :math:`g = 40`, :math:`R = 60`) and cached. Row i of an array call equals the scalar call with
    ``radius[i]`` bit for bit.
    """
    family = _check_family(family)
    degree = _check_degree(degree)
    R, scalar = _as_radius(radius)
    if (R > MAX_RADIUS).any():
        raise ValueError(
            f"radius must be <= {MAX_RADIUS} (MAX_RADIUS): e^R and the coefficients overflow float64 "
            f"beyond it, got maximum {R.max()!r}"
        )
    a = _coefficients_rows(FAMILIES[family], degree, R)
    return a[0] if scalar else a


def relative_error_bound(family: str, degree: int, radius) -> float | np.ndarray:
    r"""Certified upper bound on :math:`\sup_{|x|\le R} |\hat P(x) - e^x| / e^x`.

    :math:`\hat P(x)` is the float64 value of the polynomial returned by :func:`exp_coefficients`,
    evaluated by Horner's rule (e.g. ``numpy.polynomial.polynomial.polyval``) at
    :math:`\hat y = \mathrm{fl}(x/R)`. The bound is
    :math:`(1 + 10^{-10})[E_{\rm approx} + E_{\rm trunc} + E_{\rm fp} + 10^{-290}e^R]` with, for
    :math:`N = g + 1`,

    * Taylor: :math:`E_{\rm approx} = R^N e^R / N!` (Lagrange remainder, relative);
    * Chebyshev: :math:`E_{\rm approx} = \min\bigl(e^{2R}R^N/(2^g N!),\;
      4e^R\varphi_N\psi_N (R/2)^N/N!,\; 4e^R I_N(R)/(1 - R/(2N+2))\bigr)`, the classical
      interpolation remainder and two bounds on the Bessel tail :math:`4\sum_{k\ge N} I_k(R)` of
      the Chebyshev series with aliasing, where :math:`\varphi_N = \min(e^{R^2/(4N+4)}, e^R)`,
      :math:`\psi_N = \min(e^{R/2}, 1/(1 - R/(2N+2)))` and :math:`I_N(R)` is summed from its series
      with a certified tail (the third term only when :math:`R < 2N+2`);
      :math:`E_{\rm trunc} \le 2^{-64}` for the dropped tail;
    * :math:`E_{\rm fp} = e^R[\gamma_{5g+1}(1+\gamma_{6g+2})\hat H_{\rm low}
      + \gamma_{3S+3g+3}(1+\gamma_{6S+4})\hat H_{\rm high}]`, :math:`\gamma_k = ku/(1-ku)`,
      :math:`u = 2^{-53}`, :math:`H_{\rm low} = \sum_{s\le g} R^s/s!`,
      :math:`H_{\rm high} = \sum_{g<s\le S}(R^s/s!)\|G_{:,s}\|_1` (0 for Taylor): the coefficients'
      own rounding, Horner's rule (Higham 2002, §5.1) and the rounding of :math:`y`, all relative to
      :math:`\min e^x = e^{-R}`.

    The derivations are in :doc:`/math/exp_polynomials`.

    Parameters
    ----------
    family : {"taylor", "chebyshev"}
    degree : int
        ``0 <= degree <= MAX_DEGREE``.
    radius : float or ndarray of shape (n,)
        Finite radii :math:`R \ge 0`.

    Returns
    -------
    bound : float, or ndarray of float64 with shape (n,)
        Never NaN. Values of 1 or more are returned as computed (the polynomial is then useless as a
        relative approximation); ``inf`` for :math:`R >` :data:`MAX_RADIUS` or on overflow.

    Notes
    -----
    The floating-point part is a floor of about :math:`5g\,u\,e^{2R}`: the best bound over degrees is
    about :math:`6\cdot10^{-14}` at :math:`R = 1`, :math:`4\cdot10^{-11}` at :math:`R = 4`,
    :math:`1.4\cdot10^{-7}` at :math:`R = 8`, :math:`5\cdot10^{-4}` at :math:`R = 12`, and above 1
    from :math:`R \approx 16` on. Cost per row O(S) with :math:`S \approx \max(g, eR + 25)`
    (Chebyshev) or :math:`S = g` (Taylor), plus O(R) for the Bessel series; no coefficients are
    formed.
    """
    family = _check_family(family)
    degree = _check_degree(degree)
    R, scalar = _as_radius(radius)
    total = _bound_rows(FAMILIES[family], degree, R).total
    return float(total[0]) if scalar else total


def min_degree(family: str, radius, tol: float, max_degree: int = 60) -> int | np.ndarray:
    r"""Smallest degree whose :func:`relative_error_bound` is at most ``tol``.

    Parameters
    ----------
    family : {"taylor", "chebyshev"}
    radius : float or ndarray of shape (n,)
        Finite radii :math:`R \ge 0`.
    tol : float
        Target relative error, finite and > 0.
    max_degree : int, default 60
        Largest degree tried, ``0 <= max_degree <= MAX_DEGREE``.

    Returns
    -------
    degree : int, or ndarray of int64 with shape (n,)
        Per-row smallest :math:`g \le` ``max_degree`` with bound :math:`\le` ``tol``. (The bound is
        not monotone in :math:`g` at the floating-point floor, hence "smallest", not "first of a
        monotone run".)

    Raises
    ------
    ValueError
        ``tol`` not finite or not positive; or ``tol`` unreachable for some radius: the message gives
        the best certified bound over degrees ``0..max_degree`` and the floating-point floor (about
        :math:`5g\,u\,e^{2R}`) that blocks it.
    TypeError, ValueError
        Bad ``family``, ``radius`` or ``max_degree`` as in :func:`exp_coefficients`.

    Notes
    -----
    Degrees are scanned upwards; the full bound is evaluated only on rows where a closed-form lower
    bound of :math:`E_{\rm approx}` (O(1) per row; the Bessel series cut to its first term) is
    already :math:`\le` ``tol``, so a row usually costs O(g) closed forms plus one or two O(S) bound
    evaluations. Measured here: :math:`10^6` radii in [0, 8], tol :math:`10^{-5}`: 1.8 s Chebyshev,
    0.5 s Taylor.
    """
    family = _check_family(family)
    fam = FAMILIES[family]
    tol = _check_tol(tol)
    max_degree = _check_degree(max_degree, "max_degree")
    R, scalar = _as_radius(radius)
    n = R.size
    result = np.full(n, -1, dtype=np.int64)
    active = np.ones(n, dtype=bool)
    for g in range(max_degree + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        with np.errstate(over="ignore"):
            approx = np.exp(fam.log_approx_error(g, R[idx], sharp=False))
        cand = idx[(approx <= tol) & (R[idx] <= MAX_RADIUS)]
        if cand.size == 0:
            continue
        passed = cand[_bound_rows(fam, g, R[cand]).total <= tol]
        result[passed] = g
        active[passed] = False
    failed = np.flatnonzero(result < 0)
    if failed.size:
        worst = int(failed[np.argmax(R[failed])])
        r = R[worst : worst + 1]
        best, best_g, floor = np.inf, 0, np.inf
        for g in range(max_degree + 1):
            parts = _bound_rows(fam, g, r)
            if parts.total[0] < best:
                best, best_g, floor = float(parts.total[0]), g, float(parts.fp[0])
        where = f"radius {float(R[worst])!r}" if scalar else f"{failed.size} of {n} radii (largest {float(R[worst])!r})"
        raise ValueError(
            f"tol={tol!r} is unreachable for {where} with family {family!r} and max_degree={max_degree}: "
            f"the best certified relative error bound is {best:.3g} (degree {best_g}), of which the "
            f"floating-point floor of evaluating the monomial form in float64 (about 5g·u·e^(2R)) "
            f"is {floor:.3g}. Use a larger tol, a smaller radius"
            + (" or a larger max_degree." if floor < tol else ".")
        )
    return int(result[0]) if scalar else result
