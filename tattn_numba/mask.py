"""Attention masks: which key pairs each query row may attend to.

Every mask the package supports is a *box* per query row: row i sees the pairs
(j1, j2) ∈ [lo1(i), hi1(i)) × [lo2(i), hi2(i)). The full mask is the box [0, m1) × [0, m2) for
every row; the causal mask is [0, i + 1) × [0, i + 1); the causal sliding window (w1, w2) is
[i + 1 − w1, i + 1) × [i + 1 − w2, i + 1), clipped at 0 (FBGEMM's and Roy et al.'s convention:
i − w < j ≤ i). All bounds are nondecreasing in i, so
the keys a tile of query rows i0 ≤ i < i1 needs are [lo(i0), hi(i1 − 1)): the GPU kernels use
that to bound the loops a whole block runs.

This module is the one place that knows the rule. The kernels receive
:meth:`Mask.kernel_args` (plain scalars) and compute a row's box with :func:`key_range`
(compiled for the CPU here, for the GPU by the CUDA modules from the same Python function);
NumPy-side consumers (the surrogate's plan and rounding bounds) call :meth:`Mask.key_ranges`,
:meth:`Mask.pair_counts` and :meth:`Mask.query_ranges`. Validation builds a mask from the
public keywords (``causal=True`` is a shorthand for ``mask=Mask(causal=True)``, ``window=(w1, w2)``
for ``mask=Mask(window=(w1, w2))``) and everything else passes it along.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import config

__all__ = ["Mask", "key_range", "check_mask"]


def key_range(causal: bool, width: int, i: int, m: int) -> tuple[int, int]:
    """The box side ``[lo, hi)`` of key rows that query row ``i`` sees among ``m`` key rows.

    ``causal`` and ``width`` come from :meth:`Mask.kernel_args`: without a causal mask every
    row sees ``[0, m)``; with it, row i sees the at most ``width`` rows ending at i (``width = m``
    for the plain causal mask, the window otherwise).
    Plain Python so that the CPU (:data:`key_range_jit`) and the GPU compile the same rule.
    """
    if causal:
        hi = min(m, i + 1)
        return max(0, hi - width), hi
    return 0, m


key_range_jit = numba.njit(inline="always", cache=config.CACHE)(key_range)


@dataclass(frozen=True)
class Mask:
    """Which key pairs (j1, j2) each query row i may attend to (a box per row, see the module).

    Parameters
    ----------
    causal : bool
        Only pairs with ``j1 <= i`` and ``j2 <= i`` (self-attention shapes, ``n == m1 == m2``).
        ``Mask()`` is the full mask.
    window : (int, int), optional
        Causal sliding windows ``(w1, w2)``: row i sees ``i − w1 < j1 <= i`` and
        ``i − w2 < j2 <= i``. Implies ``causal``; windows of at least n are the causal mask.
        The exact kernels never touch a pair outside the window: their work is
        O(n·w1·w2·(d + dv)).

    Examples
    --------
    >>> Mask(causal=True).key_ranges(3, 3, 3)[0]
    (array([0, 0, 0]), array([1, 2, 3]))
    >>> Mask(window=(2, 1)).key_ranges(3, 3, 3)
    ((array([0, 0, 1]), array([1, 2, 3])), (array([0, 1, 2]), array([1, 2, 3])))
    """

    causal: bool = False
    window: tuple[int, int] | None = None

    def __post_init__(self):
        if not isinstance(self.causal, (bool, np.bool_)):
            raise TypeError(f"causal must be a bool, got {type(self.causal).__name__}")
        object.__setattr__(self, "causal", bool(self.causal))
        if self.window is not None:
            object.__setattr__(self, "window", _check_window(self.window))
            object.__setattr__(self, "causal", True)

    @property
    def is_full(self) -> bool:
        """Whether every row sees every pair (no mask at all)."""
        return not self.causal

    def swapped(self) -> "Mask":
        """The same mask with the two key sets exchanged (a window's widths swap)."""
        return Mask(causal=self.causal, window=None if self.window is None else (self.window[1], self.window[0]))

    def describe(self) -> str:
        """A short name for messages and reports: ``"full"``, ``"causal"`` or
        ``"causal window (w1, w2)"``."""
        if self.window is not None:
            return f"causal window {self.window}"
        return "causal" if self.causal else "full"

    def check_shapes(self, n: int, m1: int, m2: int) -> None:
        """Raise ``ValueError`` when the mask does not fit the problem's lengths."""
        if self.causal and not n == m1 == m2:
            keyword = f"window={self.window}" if self.window is not None else "causal=True"
            raise ValueError(f"{keyword} needs n == m1 == m2 (self-attention), got n={n}, m1={m1}, m2={m2}")

    def kernel_args(self, m1: int, m2: int) -> tuple[bool, int, int]:
        """``(causal, width1, width2)``: what the kernels pass to :func:`key_range` for the
        first and the second key set."""
        if self.window is None:
            return self.causal, int(m1), int(m2)
        return True, min(self.window[0], int(m1)), min(self.window[1], int(m2))

    def narrow_window(self, n: int) -> tuple[int, int] | None:
        """``(w1, w2)`` clipped to n when the mask is a window narrower than n on some side (the
        surrogate then runs its windowed scans), else None (full, or the plain causal mask for
        self-attention of length n)."""
        causal, w1, w2 = self.kernel_args(n, n)
        if not causal or (w1 >= n and w2 >= n):
            return None
        return int(w1), int(w2)

    def key_ranges(self, n: int, m1: int, m2: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """``((lo1, hi1), (lo2, hi2))``, int64 arrays (n,): every row's box."""
        causal, width1, width2 = self.kernel_args(m1, m2)
        rows = np.arange(n, dtype=np.int64)
        sides = []
        for width, m in ((width1, m1), (width2, m2)):
            hi = np.minimum(m, rows + 1) if causal else np.full(n, m, dtype=np.int64)
            lo = np.maximum(0, hi - width) if causal else np.zeros(n, dtype=np.int64)
            sides.append((lo, hi))
        return tuple(sides)

    def pair_counts(self, n: int, m1: int, m2: int) -> tuple[np.ndarray, np.ndarray]:
        """|I1(i)|, |I2(i)|: how many j1 and j2 row i sees, float64 arrays (n,)."""
        return tuple((hi - lo).astype(np.float64) for lo, hi in self.key_ranges(n, m1, m2))

    def query_ranges(self, n: int, m1: int, m2: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """``((start1, stop1), (start2, stop2))``: the query rows ``start ≤ i < stop`` that see
        key row j of each key set, int64 arrays (m1,) and (m2,) (an interval, since the boxes
        are nondecreasing in i)."""
        sides = []
        for (lo, hi), m in zip(self.key_ranges(n, m1, m2), (m1, m2)):
            keys = np.arange(m, dtype=np.int64)
            sides.append((np.searchsorted(hi, keys, side="right"), np.searchsorted(lo, keys, side="right")))
        return tuple(sides)


FULL = Mask()


def _check_window(window) -> tuple[int, int]:
    """``window`` as a pair of positive Python ints, or ``TypeError``/``ValueError`` naming it."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(f"window must be a pair (w1, w2) of positive ints, got {window!r}")
    for w in window:
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, (int, np.integer)):
            raise TypeError(f"window must be a pair (w1, w2) of positive ints, got {window!r} "
                            f"(an entry of type {type(w).__name__})")
        if w < 1:
            raise ValueError(f"window entries must be at least 1 (a row sees itself), got window={tuple(window)!r}")
    return int(window[0]), int(window[1])


def check_mask(mask, causal, window=None) -> Mask:
    """The :class:`Mask` of the public keywords: ``mask`` (a :class:`Mask` or None) and its
    shorthands ``causal`` (a bool) and ``window`` (a pair of positive ints or None; causal
    sliding windows, ``causal=True`` may be given with it). Raises ``TypeError`` for wrong types
    and ``ValueError`` when ``mask`` is given together with a shorthand."""
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if mask is None:
        return Mask(causal=bool(causal), window=window)
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be a tattn_numba.Mask or None, got {type(mask).__name__}")
    if causal or window is not None:
        keyword, given = ("causal=True", "causal=True") if causal else ("window=", f"window={window!r}")
        raise ValueError(f"pass either mask= or {keyword}, not both (got mask={mask!r} and {given})")
    return mask
