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

Families
--------
``"taylor"``
    :math:`a_t = R^t / t!` (the truncated Taylor series of :math:`e^{Ry}`).
``"chebyshev"``
    The interpolant of :math:`e^{Ry}` at the :math:`g+1` Chebyshev points of the first kind
    :math:`y_j = \cos((2j+1)\pi / (2g+2))`, in monomial form. It needs roughly a third fewer degrees
    than Taylor for the same tolerance when :math:`R \gtrsim 1`.

How the Chebyshev monomial coefficients are computed (and why not from node values)
-----------------------------------------------------------------------------------
The obvious route (values at the nodes times a fixed matrix: DCT, then ``cheb2poly``) gives each
Chebyshev coefficient an *absolute* error of order :math:`u\,e^R`; the conversion to monomials
amplifies it by up to :math:`|T_k(i)| \approx (1+\sqrt2)^k`. Measured with
``chebinterpolate`` + ``cheb2poly`` at degree 30: coefficients off by about :math:`10^{-4}` for
:math:`R = 10^{-3}` and :math:`R = 1` alike (:math:`10^{-8}` at degree 20), so :math:`\sum_t|a_t|`,
which sets both the float64 evaluation floor and the magnitude of the SPEC §5 features, is inflated
by orders of magnitude (Horner error 2e-14 against 4e-16 here). Instead, with
:math:`\mathcal I_g` the interpolation operator,

.. math:: P = \mathcal I_g[e^{Ry}] = \sum_{s \ge 0} \frac{R^s}{s!}\,\mathcal I_g[y^s],
          \qquad \mathcal I_g[y^s] = y^s \ (s \le g),

so :math:`a_t = R^t/t! + \sum_{g < s \le S} (R^s/s!)\, G_{t,s}` where column :math:`s` of :math:`G`
holds the monomial coefficients of :math:`\mathcal I_g[y^s] = y^s \bmod \omega`,
:math:`\omega = 2^{-g} T_{g+1}` the monic node polynomial. :math:`G` depends on the degree only: it
is computed once per degree in *exact* dyadic rational arithmetic (Python integers; the recurrence
:math:`p_{s+1} = y\,p_s - \mathrm{lead}(p_s)\,\omega`), rounded once to float64 and cached. The
per-row work is then a sum of terms :math:`(R^s/s!)\,G_{:,s}` with positive weights whose rounding
error is bounded in the next section. The tail :math:`s > S` is dropped with a rigorous bound (Lebesgue constant times
the exponential-series tail), where :math:`S = S(R, g)` is the smallest order making that tail below
:math:`2^{-64}` relative; it depends only on the row's own radius, so vectorised and scalar calls
agree bit for bit.

The certified bound
-------------------
:func:`relative_error_bound` returns :math:`B \ge \sup_{|x| \le R} |\hat P(x) - e^x| / e^x` where
:math:`\hat P(x)` is the float64 result of Horner's rule (or any scheme with the same error bound,
e.g. ``numpy.polynomial.polynomial.polyval``) applied to the coefficients returned by
:func:`exp_coefficients` at :math:`\hat y = \mathrm{fl}(x/R)`. With :math:`N = g+1`,
:math:`u = 2^{-53}`, :math:`\gamma_k = ku/(1-ku)` (Higham 2002, §3.1):

.. math:: B = (1 + 10^{-10})\,\bigl[E_{\rm approx} + E_{\rm trunc} + E_{\rm fp}
               + 10^{-290} e^{R}\bigr].

* :math:`E_{\rm approx}` -- exact-arithmetic error of the exact polynomial, divided by
  :math:`\min_{|x|\le R} e^x = e^{-R}` where needed:

  - Taylor (Lagrange remainder): for :math:`x<0` the relative error is
    :math:`e^{\xi - x}|x|^N/N! \le e^R R^N/N!`, for :math:`x > 0` it is :math:`\le R^N/N!`, so
    :math:`E_{\rm approx} = R^N e^R / N!`.
  - Chebyshev: the minimum of three certified bounds.
    (a) Classical interpolation remainder (e.g. Mason–Handscomb 2003, Thm 6.5):
    :math:`|f - P| \le \|f^{(N)}\|_\infty / (2^g N!) = e^R R^N/(2^g N!)`, relative
    :math:`e^{2R} R^N / (2^g N!)`.
    (b) Chebyshev-series tail plus aliasing (Trefethen 2013, ATAP Thm 4.2 / Ch. 8):
    :math:`e^{Ry} = I_0(R) + 2\sum_{k\ge1} I_k(R) T_k(y)` (Abramowitz–Stegun 9.6.34); on first-kind
    nodes :math:`T_{2pN\pm k} = (-1)^p T_k` and :math:`T_{(2p+1)N} = 0`, hence
    :math:`|f - P| \le 2\sum_{k\ge N} |c_k| = 4\sum_{k\ge N} I_k(R)`. From the series
    :math:`I_k(R) = \sum_j (R/2)^{2j+k}/(j!(j+k)!)` (A–S 9.6.10) and :math:`(j+k)! \ge k!(k+1)^j`,
    :math:`(j+k)! \ge k!\,j!`:
    :math:`I_k(R) \le \frac{(R/2)^k}{k!}\varphi_k`, :math:`\varphi_k = \min(e^{R^2/(4k+4)}, e^R)`
    (non-increasing in :math:`k`), and
    :math:`\sum_{k\ge N} (R/2)^k/k! \le \frac{(R/2)^N}{N!}\psi_N`,
    :math:`\psi_N = \min\bigl(e^{R/2}, 1/(1 - R/(2N+2))\bigr)` (the second only when
    :math:`R < 2N+2`; Lagrange remainder and geometric ratio), giving the closed form
    :math:`4 e^R \varphi_N \psi_N (R/2)^N / N!`. Sharper, when :math:`R < 2N+2`: termwise in the
    series, :math:`I_{k+1}(R) \le \frac{R}{2k+2} I_k(R)`, so
    :math:`\sum_{k\ge N} I_k \le I_N/(1 - R/(2N+2))`, and :math:`I_N(R)` itself is summed from its
    positive series up to a certified geometric tail (ratios :math:`(R^2/4)/((j+1)(j+N+1))`
    decrease in :math:`j`), giving :math:`4 e^R I_N(R)/(1 - R/(2N+2))`. Both are smaller than (a)
    by about :math:`e^R/2` once :math:`N \gg R`; the minimum of the three is used.

* :math:`E_{\rm trunc}` (Chebyshev only) -- dropping the terms :math:`s > S`:
  :math:`|\mathcal I_g[y^s]| \le \Lambda_g` on :math:`[-1,1]` with the Lebesgue constant
  :math:`\Lambda_g \le 1 + \tfrac{2}{\pi}\ln(g+1) \le 2 + \ln(g+1)` (Rivlin 1974), and
  :math:`\sum_{s>S} R^s/s! \le \frac{R^{S+1}}{(S+1)!}\min\bigl(e^R, 1/(1 - R/(S+2))\bigr)`; times
  :math:`e^R`. By the choice of :math:`S` it is below :math:`2^{-64}`.

* :math:`E_{\rm fp}` -- rounding. Split :math:`H = H_{\rm low} + H_{\rm high}`,
  :math:`H_{\rm low} = \sum_{s\le g} V_s`, :math:`H_{\rm high} = \sum_{g<s\le S} V_s\|G_{:,s}\|_1`,
  :math:`V_s = R^s/s!`; :math:`H \ge \sum_t |a_t|`. :math:`V_s` comes from the recurrence
  :math:`V_s = V_{s-1}\cdot(R/s)` (relative error :math:`\le\gamma_{2s}`); the correction
  :math:`\sum_{s>g} V_s G_{:,s}` is summed highest power first (:math:`G` rounded once, one rounding
  per product, :math:`S-g` additions) and added to :math:`V_t` last, so
  :math:`\sum_t |\hat a_t - a_t| \le \gamma_{2g+1} H_{\rm low} + \gamma_{3S+3} H_{\rm high}`.
  Horner's rule costs :math:`\gamma_{2g}\sum_t|\hat a_t||\hat y|^t` (Higham 2002, §5.1) and the
  rounding of :math:`y` another :math:`\gamma_g\sum_t|\hat a_t|` (:math:`|\hat y|\le1`). Collecting
  (:math:`\gamma_a + \gamma_b + \gamma_a\gamma_b \le \gamma_{a+b}`), and bounding the exact
  :math:`H_{\rm low}, H_{\rm high}` by their float64 values :math:`\hat H` times
  :math:`1+\gamma_{6g+2}`, :math:`1+\gamma_{6S+4}`:

  .. math:: E_{\rm fp} = e^R\bigl[\gamma_{5g+1}(1+\gamma_{6g+2})\hat H_{\rm low}
            + \gamma_{3S+3g+3}(1+\gamma_{6S+4})\hat H_{\rm high}\bigr]

  (Taylor: :math:`S = g`, :math:`H_{\rm high} = 0`). Dividing by :math:`e^{-R}` is what makes this
  a floor of about :math:`5g\,u\,e^{2R}`: best certified bounds are about :math:`6\cdot10^{-14}`
  at :math:`R = 1`, :math:`4\cdot10^{-11}` at :math:`R = 4`, :math:`1.4\cdot10^{-7}` at
  :math:`R = 8`, :math:`5\cdot10^{-4}` at :math:`R = 12` and above 1 from :math:`R \approx 16` on
  (Chebyshev; Taylor about 1.5 times higher). This is not pessimism alone: the monomial form of
  :math:`e^{-R}` cancels catastrophically (terms up to :math:`e^R/\sqrt{2\pi R}`), in the features
  of SPEC §5 as much as here; the measured floor is a few hundred times lower than the bound.

* :math:`10^{-290} e^R` absorbs underflow (subnormal :math:`V_s`), and the factor
  :math:`1 + 10^{-10}` the rounding in computing :math:`B` itself (logs, ``lgamma``).

The bound is computed in logarithms where it matters and is finite (and huge) up to
about :math:`R = 300` (Chebyshev) or :math:`370` (Taylor), where :math:`e^{2R}` leaves float64; it is
``inf`` from there on, and for
:math:`R >` :data:`MAX_RADIUS` (700) without any computation (``inf`` is trivially an upper bound);
never NaN, for any degree up to :data:`MAX_DEGREE`. Measured tightness (bound / worst error on a 20001-point grid, where the
bound is far above round-off): Taylor 1.04–1.9 for :math:`g \ge R` (up to about :math:`R` for
:math:`g < R`); Chebyshev 1.7–8.1 for :math:`g \ge R` and at most 4.5 for :math:`g \ge 2R`
(:math:`R \le 16`). The Chebyshev slack is the aliasing: the bound charges :math:`2\sum_{k\ge N} c_k`
while the actual error alternates (:math:`c_N - 2c_{N+1} + \dots` at :math:`y = -1`); for
:math:`g \ll R` only the classical remainder applies and it is loose by up to :math:`e^R`.

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
import threading
from typing import NamedTuple

import numpy as np

__all__ = [
    "FAMILIES",
    "MAX_DEGREE",
    "MAX_RADIUS",
    "exp_coefficients",
    "min_degree",
    "relative_error_bound",
]

#: Polynomial families understood by every function of this module.
FAMILIES = ("taylor", "chebyshev")

#: Largest supported degree (the exact Chebyshev tables grow as O(degree · S) big integers).
MAX_DEGREE = 256

#: Largest radius for which coefficients are returned and bounds are finite (e^R must fit in float64).
MAX_RADIUS = 700.0

_U = 2.0**-53  # unit roundoff of float64
_LOG_TRUNC_TARGET = -64.0 * math.log(2.0)  # relative size allowed for the dropped Chebyshev tail
_UNDERFLOW_SLACK = 1e-290  # absolute slack covering subnormal intermediates
_SAFETY = 1.0 + 1e-10  # covers the rounding in evaluating the bound itself
_CHUNK_ELEMENTS = 1 << 22  # rows × (S + 1) per chunk: 32 MiB of float64 work space


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def _gamma(k):
    """Higham's γ_k = k·u / (1 − k·u) (scalar or array k)."""
    return k * _U / (1.0 - k * _U)


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
# exact tables for the Chebyshev interpolant (once per degree, cached)
# --------------------------------------------------------------------------------------------------
def _cheb_T_int(n: int) -> list[int]:
    """Integer monomial coefficients (ascending) of the Chebyshev polynomial T_n."""
    prev, cur = [1], [0, 1]
    if n == 0:
        return prev
    for _ in range(n - 1):
        nxt = [0] + [2 * c for c in cur]
        for i, c in enumerate(prev):
            nxt[i] -= c
        prev, cur = cur, nxt
    return cur


class _ChebTable:
    """Columns ``G[:, s]`` = monomial coefficients of I_g[y^s] (exact, then float64), grown on demand."""

    def __init__(self, degree: int):
        self.g = degree
        self.T = _cheb_T_int(degree + 1)  # T_{g+1}: leading coefficient 2^g
        self.cols: list[np.ndarray] = []
        self.norms: list[float] = []
        for s in range(degree + 1):  # identity block: I_g[y^s] = y^s
            col = np.zeros(degree + 1)
            col[s] = 1.0
            self.cols.append(col)
            self.norms.append(1.0)
        self.num = [0] * degree + [1]  # exact numerators of column g (y^g), denominator 2^exp
        self.exp = 0
        self._arr = None
        self._nrm = None
        self.lock = threading.Lock()

    def _step(self) -> None:
        g, T, num = self.g, self.T, self.num
        lead = num[g]
        # y·p - lead·T_{g+1}/2^g, over the common denominator 2^(exp+g); the y^(g+1) term cancels
        new = [((num[t - 1] if t > 0 else 0) << g) - lead * T[t] for t in range(g + 1)]
        exp = self.exp + g
        nz = [abs(v) for v in new if v]
        if nz:  # strip common powers of two to keep the integers small
            v = min((x & -x).bit_length() - 1 for x in nz)
            v = min(v, exp)
            if v:
                new = [x >> v for x in new]
                exp -= v
        else:
            exp = 0
        self.num, self.exp = new, exp
        den = 1 << exp
        # int / int true division is correctly rounded in CPython
        self.cols.append(np.array([x / den for x in new], dtype=np.float64))
        self.norms.append((sum(abs(x) for x in new) / den) * (1.0 + 2.0 * _U))  # rounded upwards

    def get(self, smax: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            if len(self.cols) <= smax:
                while len(self.cols) <= smax:
                    self._step()
                self._arr = None
            if self._arr is None or self._arr.shape[1] <= smax:
                self._arr = np.stack(self.cols, axis=1)
                self._nrm = np.array(self.norms)
            return self._arr[:, : smax + 1], self._nrm[: smax + 1]


_TABLES: dict[int, _ChebTable] = {}
_TABLES_LOCK = threading.Lock()


def _cheb_table(degree: int) -> _ChebTable:
    with _TABLES_LOCK:
        tab = _TABLES.get(degree)
        if tab is None:
            tab = _TABLES[degree] = _ChebTable(degree)
        return tab


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


def _truncation_order(family: str, degree: int, R: np.ndarray) -> np.ndarray:
    """Per-row S >= degree: Taylor S = degree; Chebyshev the smallest S with E_trunc <= 2^-70."""
    S = np.full(R.shape, degree, dtype=np.int64)
    if family == "taylor":
        return S
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


def _coefficients_rows(family: str, degree: int, R: np.ndarray) -> np.ndarray:
    out = np.empty((R.size, degree + 1))
    if R.size == 0:
        return out
    S_all = _truncation_order(family, degree, R)
    for sl in _chunks(R.size, int(S_all.max())):
        S = S_all[sl]
        smax = int(S.max())
        V = _powers(R[sl], S, smax)
        if family == "chebyshev" and smax > degree:
            G, _ = _cheb_table(degree).get(smax)
            corr = np.zeros((V.shape[0], degree + 1))
            # fixed order, highest power first (smallest terms first): rows never interact, so
            # scalar and vector calls agree bit for bit; the leading V_t is added last, once
            for s in range(smax, degree, -1):
                corr += V[:, s : s + 1] * G[:, s]
            a = V[:, : degree + 1] + corr
        else:
            a = V[:, : degree + 1].copy()
        out[sl] = a
    return out


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


def _approx_log(family: str, degree: int, R: np.ndarray, sharp: bool = True) -> np.ndarray:
    """log of E_approx (relative, exact arithmetic).

    With ``sharp=False`` (Chebyshev) the series for I_N is replaced by its first term, which gives a
    cheap O(1) *lower* bound of E_approx (the series sum is >= 1): used to skip hopeless degrees.
    """
    N = degree + 1
    lgN = math.lgamma(N + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logR = np.log(R)
        if family == "taylor":
            return N * logR + R - lgN
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


class _BoundParts(NamedTuple):
    approx: np.ndarray
    trunc: np.ndarray
    fp: np.ndarray
    total: np.ndarray


def _bound_rows(family: str, degree: int, R: np.ndarray) -> _BoundParts:
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
            approx[idx] = np.exp(_approx_log(family, degree, r))
        S_all = _truncation_order(family, degree, r)
        if family == "chebyshev":
            pos = r > 0
            with np.errstate(divide="ignore"):
                lr = np.log(r)
            tr = np.zeros(r.size)
            for k in np.unique(S_all[pos]):
                m = pos & (S_all == k)
                tr[m] = np.exp(_log_lebesgue(degree) + r[m] + _log_exp_tail(r[m], lr[m], int(k) + 1))
            trunc[idx] = tr
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
                if family == "chebyshev" and smax > degree:
                    _, nrm = _cheb_table(degree).get(smax)
                    h = np.zeros(V.shape[0])
                    for s in range(smax, degree, -1):
                        h += V[:, s] * nrm[s]
                    H_high[sl] = h
            # E_fp = e^R [γ_{5g+1}(1+γ_{6g+2}) Ĥ_low + γ_{3S+3g+3}(1+γ_{6S+4}) Ĥ_high] (module docstring)
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
        tail below :math:`2^{-64}` relative, see the module docstring).
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
    a = _coefficients_rows(family, degree, R)
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

    The derivations are in the module docstring.

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
    total = _bound_rows(family, degree, R).total
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
            approx = np.exp(_approx_log(family, g, R[idx], sharp=False))
        cand = idx[(approx <= tol) & (R[idx] <= MAX_RADIUS)]
        if cand.size == 0:
            continue
        passed = cand[_bound_rows(family, g, R[cand]).total <= tol]
        result[passed] = g
        active[passed] = False
    failed = np.flatnonzero(result < 0)
    if failed.size:
        worst = int(failed[np.argmax(R[failed])])
        r = R[worst : worst + 1]
        best, best_g, floor = np.inf, 0, np.inf
        for g in range(max_degree + 1):
            parts = _bound_rows(family, g, r)
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
