"""Public entry points of the surrogate beyond ``attention(..., method="poly")``."""

from __future__ import annotations

import dataclasses

import numpy as np

from .._validation import AttentionInputs, check_attention_inputs, check_upstream
from ..attention import AttentionState, kernel_inputs, saved_forward
from ..mask import Mask
from .plan import GradientBounds, PolyPlan, gradient_bounds, make_plan

__all__ = ["poly_plan", "poly_gradient_bounds"]


def poly_plan(
    Q, K1, K2, V1, V2, *, scale: float | None = None, tol: float | None = None, degree: int | None = None,
    family: str = "chebyshev", memory_budget: int | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", dO=None,
) -> PolyPlan:
    """Inspect what ``attention(..., method="poly")`` would do, without doing it.

    Parameters
    ----------
    Q, K1, K2, V1, V2, scale
        As for :func:`tattn_numba.attention`.
    tol : float, optional
        Target bound on max |Õ − O|; the smallest certified degree is chosen.
    degree : int, optional
        A fixed degree instead (exactly one of ``tol`` and ``degree``).
    family : {"chebyshev", "taylor"}
    memory_budget : int, optional
        Bytes the surrogate may allocate (default ``config.MEMORY_BUDGET_BYTES``).
    causal, mask, window, logits
        As for :func:`tattn_numba.attention` (the bounds hold for the masked problem too; for
        ``logits="determinant"`` the plan is that of the lifted trilinear problem of width 2d,
        whose rank and radii are those of the lift). Grouped heads share the keys' statistics.
    dO : array_like, shape (..., n, dv), optional
        An upstream gradient: the plan then also carries a-priori certified bounds on the five
        gradients' errors (``plan.gradient_bounds``), computed before any attention.

    Returns
    -------
    PolyPlan
        Degree, rank r = C(d + g, g), per-row radii, certified per-row errors, the certified
        output (and, with ``dO``, gradient) bounds, and estimated time and memory.
        Cost O((n + m1 + m2)·(d + dv)·(1 + dv)).
    """
    inputs = check_attention_inputs(Q, K1, K2, V1, V2, scale, causal, mask=mask, window=window, logits=logits)
    computed = kernel_inputs(inputs)
    plan = make_plan(computed, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    if dO is None:
        return plan
    _check_plain_form(inputs)
    upstream = check_upstream(dO, inputs).astype(np.float64)
    bounds = gradient_bounds(inputs, plan, None, upstream)
    return dataclasses.replace(plan, gradient_bounds=GradientBounds(
        *(np.asarray(x).reshape(inputs.batch_shape + x.shape[1:]) for x in bounds)))


def poly_gradient_bounds(state: AttentionState, dO) -> GradientBounds:
    """Certified entrywise bounds on |surrogate gradient − exact gradient| for ``dO``.

    ``state`` comes from ``attention_forward(..., method="poly")`` on the CPU (a state of
    ``device="cuda"`` raises ``ValueError``; use :func:`poly_plan` with ``dO`` on host copies).
    Cost O((n + m1 + m2)·d·dv);
    the derivation is in :func:`tattn_numba.poly.plan.gradient_bounds` and docs/surrogate.md.
    Returns arrays shaped like the gradients.
    """
    if not isinstance(state, AttentionState) or not isinstance(state.certificate, PolyPlan):
        raise TypeError("state must come from attention_forward(..., method='poly')")
    inputs, _, O, lse = saved_forward(state)
    _check_plain_form(inputs)
    if not isinstance(inputs.Q, np.ndarray):
        raise ValueError(
            f"poly_gradient_bounds works on host arrays and this state comes from device={state.device!r}; for "
            "a-priori bounds call poly_plan(Q, K1, K2, V1, V2, ..., dO=dO) on host copies of the inputs"
        )
    dO = check_upstream(dO, inputs)
    bounds = gradient_bounds(inputs, state.certificate, O, dO.astype(np.float64), lse=np.asarray(lse, dtype=np.float64))
    return GradientBounds(*(np.asarray(x).reshape(inputs.batch_shape + x.shape[1:]) for x in bounds))


def _check_plain_form(inputs: AttentionInputs) -> None:
    """The gradient bounds are derived for one key/value entry per batch entry and trilinear
    logits; refuse the other forms (``ValueError``) instead of returning bounds that do not
    cover the summed or pulled-back gradients."""
    if inputs.heads.shares_keys or inputs.heads.expands_query or inputs.logits != "trilinear":
        raise ValueError(
            "gradient bounds are not derived yet for grouped or broadcast heads or determinant logits "
            f"({inputs.heads.describe()}, logits={inputs.logits!r}); the forward's output certificate "
            "(plan.output_bound) holds for them"
        )
