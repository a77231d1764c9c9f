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
        Where it certifies nothing for a row (relative error 1 or more at that row's radius)
        the plan reports ``inf`` in ``output_bound``; the forward refuses such a degree with
        ``ValueError``, so inspecting first is how to see which rows fail.
    family : {"chebyshev", "taylor"}
    memory_budget : int, optional
        Bytes the surrogate may allocate (default ``config.MEMORY_BUDGET_BYTES``).
    causal, mask, window, logits
        As for :func:`tattn_numba.attention` (the bounds hold for the masked problem too; for
        ``logits="determinant"`` the plan is that of the lifted trilinear problem of width 2d,
        whose rank and radii are those of the lift). Grouped heads share the keys' statistics.
    dO : array_like, shape (..., n, dv), optional
        An upstream gradient: the plan then also carries a-priori certified bounds on the five
        gradients' errors (``plan.gradient_bounds``), computed before any attention, shaped like
        the gradients: for every form (grouped or broadcast heads, whose key and value, or query,
        gradients are summed; determinant logits, pulled back through the lift), mask and dtype.

    Returns
    -------
    PolyPlan
        Degree, rank r = C(d + g, g), per-row radii, certified per-row errors, the certified
        output (and, with ``dO``, gradient) bounds, and estimated time and memory.
        Cost O((n + m1 + m2)·(d + dv)·(1 + dv)).
    """
    inputs = check_attention_inputs(Q, K1, K2, V1, V2, scale, causal, mask=mask, window=window, logits=logits)
    computed = kernel_inputs(inputs, memory_budget)
    plan = make_plan(computed, tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    if dO is None:
        return plan
    upstream = check_upstream(dO, inputs).astype(np.float64)
    bounds = gradient_bounds(inputs, computed, plan, None, upstream)
    return dataclasses.replace(plan, gradient_bounds=_caller_shapes(inputs, bounds))


def poly_gradient_bounds(state: AttentionState, dO) -> GradientBounds:
    """Certified entrywise bounds on |surrogate gradient − exact gradient| for ``dO``.

    ``state`` comes from ``attention_forward(..., method="poly")`` on the CPU (a state of
    ``device="cuda"`` raises ``ValueError``; use :func:`poly_plan` with ``dO`` on host copies).
    Cost O((n + m1 + m2)·d·dv);
    the derivation is in :func:`tattn_numba.poly.plan.gradient_bounds` and docs/surrogate.md.

    Parameters
    ----------
    state : AttentionState
        From ``attention_forward(..., method="poly")``, any form: grouped or broadcast heads,
        determinant logits, causal masks and windows, float32 or float64.
    dO : array_like, shape (..., n, dv)
        The upstream gradient given to :func:`tattn_numba.attention_backward`.

    Returns
    -------
    GradientBounds
        ``(dQ, dK1, dK2, dV1, dV2)`` shaped like the gradients (dQ like Q, the key and value
        bounds like K1, K2, V1, V2, covering the sums over grouped or broadcast heads), float64.
    """
    if not isinstance(state, AttentionState) or not isinstance(state.certificate, PolyPlan):
        raise TypeError("state must come from attention_forward(..., method='poly')")
    inputs, computed, O, lse = saved_forward(state)
    if not isinstance(inputs.Q, np.ndarray):
        raise ValueError(
            f"poly_gradient_bounds works on host arrays and this state comes from device={state.device!r}; for "
            "a-priori bounds call poly_plan(Q, K1, K2, V1, V2, ..., dO=dO) on host copies of the inputs"
        )
    dO = check_upstream(dO, inputs)
    bounds = gradient_bounds(inputs, computed, state.certificate, O, dO.astype(np.float64),
                             lse=np.asarray(lse, dtype=np.float64))
    return _caller_shapes(inputs, bounds)


def _caller_shapes(inputs: AttentionInputs, bounds: GradientBounds) -> GradientBounds:
    """Batch-flattened bounds with the leading dimensions of the caller's gradients: Q's for
    dQ, the keys' and values' for the other four."""
    heads = inputs.heads
    shapes = (heads.query_shape,) + (heads.key_shape,) * 4
    return GradientBounds(*(np.asarray(x).reshape(shape + x.shape[1:]) for x, shape in zip(bounds, shapes)))
