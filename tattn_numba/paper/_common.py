"""Shared pieces of :mod:`tattn_numba.paper`: input validation, the Khatri–Rao helper, result types.

Every public function validates through here, so the error messages (which name the argument) are
the same whichever method runs. Validated data come back as C-contiguous float64 copies together
with the caller's dtype, in which the public functions return their results.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorly as tl
from tensorly.tenalg import khatri_rao

from .._validation import as_float_array
from ..poly.options import PolyOptions

METHODS = ("exact", "poly")


class WeightGrads(NamedTuple):
    """Gradients of the paper's loss with respect to the five d×d weight matrices.

    Each field has shape (d, d) and the dtype of the inputs.
    """

    dW_Q: np.ndarray
    dW_K1: np.ndarray
    dW_K2: np.ndarray
    dW_V1: np.ndarray
    dW_V2: np.ndarray


class Terms(NamedTuple):
    """What a driver returns (float64): the loss and, as requested, output (n, d), dX (d, d²), dY (d², d)."""

    loss: float
    out: np.ndarray | None
    dX: np.ndarray | None
    dY: np.ndarray | None


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def check_method(method) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    return method


def check_options(method: str, tol, degree, family, memory_budget) -> dict:
    """Validate the options of ``method``; return the keyword options of its driver.

    method="exact" takes none (every option must be None, else ``TypeError`` naming it);
    method="poly" validates them as :class:`~tattn_numba.poly.options.PolyOptions` (exactly one
    of ``tol`` and ``degree``, a known ``family`` with None meaning "chebyshev", a positive
    ``memory_budget``), the same checks and messages as ``attention(..., method="poly")``.
    """
    given = {"tol": tol, "degree": degree, "family": family, "memory_budget": memory_budget}
    if method != "poly":
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise TypeError(
                f"option(s) {', '.join(extra)} apply only to method='poly'; method={method!r} takes none "
                "(leave them None)"
            )
        return {}
    options = PolyOptions(**given)
    return {name: getattr(options, name) for name in given}


def check_matrix(x, name: str, dtype, shape: tuple[int, int] | None, what: str) -> np.ndarray:
    arr = as_float_array(x, name, dtype=dtype)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape {what}, got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {what} = {shape}, got {arr.shape}")
    return arr


def check_data(A1, A2, A3, A4, A5, E):
    """Validate A1..A5 (n, d) and E (n, d) (E may be None); return float64 copies and the dtype."""
    a1 = check_matrix(A1, "A1", None, None, "(n, d)")
    dtype = a1.dtype
    n, d = a1.shape
    arrays = [a1]
    for name, x in (("A2", A2), ("A3", A3), ("A4", A4), ("A5", A5)):
        arrays.append(check_matrix(x, name, dtype, (n, d), "(n, d) like A1"))
    e = None if E is None else check_matrix(E, "E", dtype, (n, d), "(n, d) like A1")
    as64 = [np.ascontiguousarray(a, dtype=np.float64) for a in arrays]
    e64 = None if e is None else np.ascontiguousarray(e, dtype=np.float64)
    return as64, e64, dtype, n, d


def check_XY(X, Y, dtype, d: int):
    x = check_matrix(X, "X", dtype, (d, d * d), "(d, d²)")
    y = check_matrix(Y, "Y", dtype, (d * d, d), "(d², d)")
    return np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)


def check_weights(weights: dict, dtype, d: int | None):
    """Validate square (d, d) weight matrices of one dtype (d and dtype taken from the first when None)."""
    out = []
    for name, w in weights.items():
        arr = check_matrix(w, name, dtype, None if d is None else (d, d), "(d, d)")
        if arr.shape[0] != arr.shape[1]:
            raise ValueError(f"{name} must be square (d, d), got shape {arr.shape}")
        if d is None:
            d = arr.shape[0]
        if dtype is None:
            dtype = arr.dtype
        out.append(arr)
    return out, dtype


# --------------------------------------------------------------------------------------------
# tensor algebra
# --------------------------------------------------------------------------------------------


def khatri_rao_product(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Column-wise Khatri–Rao product ``U ⊘ V`` (row ``pair(a, b) = a·rows(V) + b``)."""
    with tl.backend_context("numpy"):
        return np.asarray(khatri_rao([U, V]))
