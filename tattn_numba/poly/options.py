"""The surrogate's options, validated once: ``tol`` or ``degree``, ``family``, ``memory_budget``.

:class:`PolyOptions` is what ``attention(..., method="poly", **options)``, :func:`tattn_numba.poly_plan`
and the ``method="poly"`` functions of :mod:`tattn_numba.paper` check their keywords with, so a
wrong value gets the same exception and message wherever it is passed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import config
from .._validation import check_memory_budget
from .exp_approx import _check_degree as check_degree
from .exp_approx import _check_family as check_family

__all__ = ["PolyOptions", "NAMES", "check_tol", "check_degree", "check_family", "check_memory_budget"]

#: The keyword options of the surrogate.
NAMES = frozenset({"tol", "degree", "family", "memory_budget"})


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_tol(tol) -> float:
    """``tol`` as a float: a positive, finite real number (``TypeError``/``ValueError`` otherwise)."""
    if _is_bool(tol) or not isinstance(tol, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"tol must be a positive real number, got {type(tol).__name__} {tol!r}")
    if not math.isfinite(float(tol)) or float(tol) <= 0.0:
        raise ValueError(f"tol must be positive and finite, got {tol!r}")
    return float(tol)


@dataclass(frozen=True)
class PolyOptions:
    """Validated surrogate options.

    Parameters
    ----------
    tol : float, optional
        Target bound on max |Õ − O| (the smallest certified degree is chosen).
    degree : int, optional
        A fixed degree, 0..:data:`MAX_DEGREE`, instead (exactly one of ``tol`` and ``degree``).
    family : {"chebyshev", "taylor"}
        Polynomial family; ``None`` means ``"chebyshev"``.
    memory_budget : int or integral float, optional
        Bytes the surrogate may allocate; ``None`` means ``config.MEMORY_BUDGET_BYTES`` (read
        when :attr:`budget` is, so tests may patch it).

    Raises
    ------
    TypeError
        A value of the wrong type (a non-string family, a non-integer degree, ...).
    ValueError
        Neither or both of ``tol`` and ``degree``; an out-of-range value.

    Examples
    --------
    >>> PolyOptions(tol=1e-6).family
    'chebyshev'
    """

    tol: float | None = None
    degree: int | None = None
    family: str = "chebyshev"
    memory_budget: int | None = None

    def __post_init__(self):
        if (self.tol is None) == (self.degree is None):
            got = "neither" if self.tol is None else "both tol and degree"
            raise ValueError(
                f"method='poly' needs exactly one of tol (target bound on the output error) or degree "
                f"(polynomial degree); got {got}"
            )
        fields = {
            "tol": None if self.tol is None else check_tol(self.tol),
            "degree": None if self.degree is None else check_degree(self.degree),
            "family": "chebyshev" if self.family is None else check_family(self.family),
            "memory_budget": None if self.memory_budget is None else check_memory_budget(self.memory_budget),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def budget(self) -> int:
        """The memory budget in bytes (``config.MEMORY_BUDGET_BYTES`` when none was given)."""
        return config.MEMORY_BUDGET_BYTES if self.memory_budget is None else self.memory_budget
