"""Attention of any order t (n-way attention), SPEC §9.

Query i attends to t-tuples (j1, …, jt) of t key sets:

    logit[i, j1..jt] = s · Σ_l Q[i,l] · Π_a Ka[j_a, l]
    O[i]             = Σ_{j1..jt} softmax(logit[i, ·])[j1..jt] · (V1[j1] ∘ … ∘ Vt[jt]).

t = 1 is softmax attention, t = 2 tensor (2-simplicial) attention (:func:`tattn_numba.attention`,
to which t = 2 is dispatched for ``method="exact"``). The exact kernels are in
:mod:`tattn_numba.exact.nway_cpu`; ``method="poly"`` runs the certified low-rank polynomial
surrogate of :mod:`tattn_numba.poly.nway` for every t (t = 2 included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _host, config
from ._threads import threads_for
from ._validation import (
    _LOGIT_LIMIT_LOG10,
    _format_power,
    _log_sum_of_products,
    as_float_array,
    check_memory,
    check_memory_budget,
    check_scale,
)
from .attention import AttentionState, attention, attention_backward, attention_forward
from .exact import nway_cpu
from .heads import HeadLayout, head_layout
from .poly import nway as poly_nway
from .poly.api import poly_gradient_bounds
from .poly.plan import PolyPlan

__all__ = [
    "NwayGrads",
    "NwayState",
    "nway_attention",
    "nway_attention_backward",
    "nway_attention_forward",
    "nway_attention_grad",
    "nway_poly_gradient_bounds",
    "nway_poly_plan",
]

_METHODS = ("exact", "poly")
_DEVICES = ("cpu", "cuda")


class NwayGrads(NamedTuple):
    """Gradients of a scalar loss with respect to the n-way attention operands.

    Attributes
    ----------
    dQ : ndarray
        Shaped and typed like Q.
    dkeys, dvalues : tuple of ndarray
        One per key (value) set, in the order given, each shaped and typed like its operand.
    """

    dQ: np.ndarray
    dkeys: tuple
    dvalues: tuple


class _Inputs(NamedTuple):
    """Validated operands: the caller's arrays (``arrays``: Q, keys, values in their own shapes)
    and their batch-flattened C-contiguous forms (``Q`` (Bq, n, d), ``keys`` and ``values``
    (Bk, m_a, ·)), which the kernels read and the fingerprints cover; ``heads`` maps the B output
    entries onto them (grouped heads, broadcasting: :class:`tattn_numba.heads.HeadLayout`)."""

    arrays: tuple
    Q: np.ndarray
    keys: tuple
    values: tuple
    heads: HeadLayout
    scale: float
    causal: bool

    @property
    def batch_shape(self) -> tuple:
        """Leading dimensions of the output."""
        return self.heads.batch_shape

    @property
    def key_batch(self) -> np.ndarray:
        """(B,) the flat key/value entry of every output entry."""
        return self.heads.key_batch

    def query_rows(self, memory_budget: int | None = None) -> np.ndarray:
        """Q with one entry per output entry (B, n, d): a copy where Q broadcasts, else Q itself.
        The copy is refused (``ValueError``) before it is allocated when it alone passes the memory
        budget (``memory_budget``, the surrogate's option, else ``config.MEMORY_BUDGET_BYTES``)."""
        if not self.heads.expands_query:
            return self.Q
        budget = config.MEMORY_BUDGET_BYTES if memory_budget is None else check_memory_budget(memory_budget)
        entries = len(self.heads.query_batch)
        check_memory(entries * self.Q.shape[1] * self.Q.shape[2] * self.Q.itemsize,
                     f"Q expanded to every one of the {entries} output entries (n={self.Q.shape[1]}, "
                     f"d={self.Q.shape[2]})", budget)
        return self.Q[self.heads.query_batch]

    def for_surrogate(self, memory_budget: int | None = None) -> _Inputs:
        """These inputs with ``Q`` replaced by :meth:`query_rows` (what :mod:`tattn_numba.poly.nway`
        reads: one Q entry per output entry, the keys and values per key entry, ``key_batch``)."""
        return self._replace(Q=self.query_rows(memory_budget))

    @property
    def dtype(self) -> np.dtype:
        return self.Q.dtype

    @property
    def t(self) -> int:
        return len(self.keys)

    def flat_operands(self) -> list:
        return [self.Q, *self.keys, *self.values]

    def names(self) -> list[str]:
        return ["Q"] + [f"keys[{a}]" for a in range(self.t)] + [f"values[{a}]" for a in range(self.t)]


@dataclass(frozen=True)
class NwayState:
    """What :func:`nway_attention_forward` saves for :func:`nway_attention_backward`.

    Attributes
    ----------
    O : ndarray, shape (..., n, dv)
        The forward output in the input dtype (the array returned, never the memory the backward reads).
    lse : ndarray, shape (..., n), float64
        ``lse[i] = log Σ_j exp(logit[i, j])`` over the tuples row i sees (a copy).
    scale : float
    causal : bool
    t : int
        The order (number of key sets).
    method : str
        ``"exact"`` or ``"poly"``.
    options : dict
        The surrogate's options of the forward call (``tol`` or ``degree``, ``family``,
        ``memory_budget``); empty for the exact method.
    certificate : PolyPlan or None
        For ``method="poly"``, the plan with its certified bounds (degree, rank, per-row radii,
        ``output_bound``), as :func:`nway_poly_plan` returns it; None for the exact method.

    Notes
    -----
    The state refers to the caller's arrays (no copy) and keeps a CRC-32 fingerprint of each;
    :func:`nway_attention_backward` recomputes them and raises ``ValueError`` naming the operand
    that was modified in between. For t = 2 it wraps the :class:`tattn_numba.AttentionState` of
    :func:`tattn_numba.attention_forward`.
    """

    O: np.ndarray
    lse: np.ndarray
    scale: float
    causal: bool
    t: int
    method: str = "exact"
    options: dict = field(default_factory=dict)
    certificate: PolyPlan | None = None
    _inputs: _Inputs | None = field(default=None, repr=False)
    _O64: Any = field(default=None, repr=False)
    _lse64: Any = field(default=None, repr=False)
    _fingerprints: tuple = field(default=(), repr=False)
    _pairwise: AttentionState | None = field(default=None, repr=False)


def _check_method_device(method, device) -> None:
    for name, value, known in (("method", method, _METHODS), ("device", device, _DEVICES)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; expected one of {list(known)}")


def _check_options(method: str, options: dict) -> None:
    """``TypeError`` for keyword options the method does not take (the exact method takes none)."""
    known = poly_nway.OPTIONS if method == "poly" else frozenset()
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method={method!r}; accepted options: "
                        f"{', '.join(sorted(known)) or 'none'}")


def _sets(x, name: str) -> tuple:
    if not isinstance(x, (tuple, list)):
        raise TypeError(f"{name} must be a tuple or list of arrays (one per key set), got {type(x).__name__}")
    if len(x) == 0:
        raise ValueError(f"{name} must hold at least one array (t >= 1), got an empty {type(x).__name__}")
    return tuple(x)


def _flatten(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr.reshape((-1,) + arr.shape[-2:]))


def _check_range(scale: float, Q: np.ndarray, keys: tuple, heads: HeadLayout) -> None:
    """Refuse inputs whose logits or whose partial products (Q and any keys, formed by the
    kernels) could pass 1e300, from column maxima, in log space (as
    :func:`tattn_numba._validation.check_logit_range` does for t = 2)."""
    maxima = [np.abs(Q).max(axis=1)[heads.query_batch]] + [np.abs(K).max(axis=1)[heads.key_batch] for K in keys]
    log10 = np.log(10.0)
    logit = (max(np.log(scale), 0.0) + _log_sum_of_products(*maxima)).max() / log10
    if logit > _LOGIT_LIMIT_LOG10:
        raise ValueError(
            "Q and keys are too large: the logits scale·Σ_l Q[i,l]·Π_a Ka[j_a,l] may overflow float64 "
            f"(bound {_format_power(logit)}, above the limit 1e+300); rescale the inputs or the scale"
        )
    with np.errstate(divide="ignore"):
        partial = sum(np.maximum(np.log(m), 0.0) for m in maxima).max() / log10
    if partial > _LOGIT_LIMIT_LOG10:
        raise ValueError(
            "Q and keys are too large together: the exact kernels form the products Q_i ∘ K1_j1 ∘ … "
            f"elementwise, up to {_format_power(partial)}, above the limit 1e+300; rescale the inputs"
        )


def _validate(Q, keys, values, scale, causal, method, device, options) -> _Inputs:
    _check_method_device(method, device)
    _check_options(method, options)
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    keys, values = _sets(keys, "keys"), _sets(values, "values")
    if len(keys) != len(values):
        raise ValueError(
            f"keys and values must have the same length t (one value set per key set), got "
            f"len(keys)={len(keys)} and len(values)={len(values)}"
        )
    Q = as_float_array(Q, "Q")
    keys = tuple(as_float_array(k, f"keys[{a}]", Q.dtype) for a, k in enumerate(keys))
    values = tuple(as_float_array(v, f"values[{a}]", Q.dtype) for a, v in enumerate(values))
    named = [("Q", Q)] + [(f"keys[{a}]", k) for a, k in enumerate(keys)] + \
            [(f"values[{a}]", v) for a, v in enumerate(values)]
    for name, arr in named:
        if arr.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., rows, features), got shape {arr.shape}")
    key_shape = keys[0].shape[:-2]
    for name, arr in named[2:]:
        if arr.shape[:-2] != key_shape:
            raise ValueError(
                f"{name} has leading (batch, head) dimensions {arr.shape[:-2]} but keys[0] has {key_shape}; "
                "every key and value set must have the same leading dimensions (Q's may differ: grouped "
                "heads and broadcasting)"
            )
    heads = head_layout(Q.shape[:-2], key_shape, "the keys and values", "keys[0]")
    n, d = Q.shape[-2:]
    dv = values[0].shape[-1]
    for a, (k, v) in enumerate(zip(keys, values)):
        if k.shape[-1] != d:
            raise ValueError(f"keys[{a}] must have shape (..., m{a + 1}, d={d}) to match Q, got {k.shape}")
        if v.shape[-2] != k.shape[-2]:
            raise ValueError(
                f"values[{a}] must have shape (..., m{a + 1}={k.shape[-2]}, dv) to match keys[{a}], got {v.shape}"
            )
        if v.shape[-1] != dv:
            raise ValueError(
                f"values[{a}] must have shape (..., m{a + 1}, dv={dv}) with the value width of values[0], "
                f"got {v.shape}"
            )
    if causal:
        lengths = [k.shape[-2] for k in keys]
        if any(m != n for m in lengths):
            raise ValueError(
                f"causal=True needs every key set as long as the queries (n == m_a), got n={n} and "
                f"m={tuple(lengths)}"
            )
    scale = check_scale(scale, d)
    flat_keys = tuple(_flatten(k) for k in keys)
    inputs = _Inputs((Q, keys, values), _flatten(Q), flat_keys, tuple(_flatten(v) for v in values),
                     heads, scale, bool(causal))
    _check_range(scale, inputs.Q, flat_keys, heads)
    return inputs


def _flops(inputs: _Inputs) -> float:
    """2·B·n·Π m_a·(d + dv): the exact forward's work (without the causal discount)."""
    B = len(inputs.key_batch)
    n, d = inputs.Q.shape[1:]
    return 2.0 * B * n * float(np.prod([k.shape[1] for k in inputs.keys], dtype=np.float64)) * (
        d + inputs.values[0].shape[2])


def _cast(x: np.ndarray, inputs: _Inputs, name: str, leading: tuple) -> np.ndarray:
    """A float64 result in the input dtype with the caller's leading dimensions; ``ValueError``
    when it overflows there."""
    out, finite = _host.OPS.cast_finite(x, inputs.dtype)
    if not finite:
        raise ValueError(
            f"the result {name} overflows {inputs.dtype.name} although the inputs are finite; rescale the inputs"
            + (" (or use float64)" if inputs.dtype == np.float32 else "")
        )
    return out.reshape(tuple(leading) + out.shape[1:])


def _fingerprints(inputs: _Inputs) -> tuple[int, ...]:
    return _host.OPS.fingerprints(inputs.flat_operands(), True)


def _on_pair_kernels(inputs: _Inputs, method: str, device: str) -> bool:
    """Whether the call runs on the tensor-attention implementations (:func:`tattn_numba.attention`):
    t = 2 exact on the CPU, and t <= 2 on the GPU (t = 1 as t = 2 with a first key set of one row
    of ones); ``ValueError`` for t >= 3 on the GPU."""
    if device == "cpu":
        return method == "exact" and inputs.t == 2
    if inputs.t > 2:
        raise ValueError(
            f"device={device!r} runs n-way attention for t <= 2 (on the tensor-attention kernels), got t={inputs.t}; "
            "use device='cpu' for t >= 3"
        )
    return True


def _pairwise_call(inputs: _Inputs) -> tuple[tuple, dict]:
    """The operands (Q, K1, K2, V1, V2) and mask keywords of the :func:`tattn_numba.attention`
    call that computes ``inputs``: t = 2 as it is; t = 1 with K1 and V1 all ones (the logit
    s·Σ_l q_l·1·k_l, the value 1·v): one row of them, or, causal, n rows with the window (1, n),
    which lets row i see j1 = i and every j2 <= i, n·(i + 1) pairs in all."""
    Q, keys, values = inputs.arrays
    if inputs.t == 2:
        return (Q, keys[0], keys[1], values[0], values[1]), {"causal": inputs.causal}
    rows = keys[0].shape[-2] if inputs.causal else 1
    ones = [np.ones(x.shape[:-2] + (rows, x.shape[-1]), dtype=inputs.dtype) for x in (keys[0], values[0])]
    mask = {"window": (1, rows)} if inputs.causal else {}
    return (Q, ones[0], keys[0], ones[1], values[0]), mask


def _pairwise_grads(g, t: int) -> NwayGrads:
    """The n-way gradients of the pairwise call of :func:`_pairwise_call`."""
    if t == 2:
        return NwayGrads(g.dQ, (g.dK1, g.dK2), (g.dV1, g.dV2))
    return NwayGrads(g.dQ, (g.dK2,), (g.dV2,))


def nway_attention_forward(
    Q, keys: Sequence, values: Sequence, *, scale: float | None = None, causal: bool = False, method: str = "exact",
    device: str = "cpu", **options: Any,
) -> tuple[np.ndarray, NwayState]:
    """n-way attention that also returns the state its backward pass needs.

    Parameters
    ----------
    Q : array_like, shape (..., H, n, d)
    keys : tuple or list of array_like, shapes (..., Hk, m_a, d)
        K1, …, Kt, any t >= 1.
    values : tuple or list of array_like, shapes (..., Hk, m_a, dv)
        V1, …, Vt (Va as long as Ka). All operands float32 or float64 (one dtype), finite,
        non-empty. The keys and values share their leading dimensions; Q's broadcast against
        them as for :func:`tattn_numba.attention`: ``H`` a multiple of ``Hk`` gives grouped
        heads (query head h uses key/value head ``h // (H // Hk)``), without repeating the keys
        or values (the surrogate computes each key entry's summaries once for its group), and
        other leading axes broadcast as in NumPy.
    scale : float, optional
        Logit scale s; ``None`` means ``1/d``.
    causal : bool
        Keep only tuples with every ``j_a <= i``; needs ``n == m_a`` for every a.
    method : {"exact", "poly"}
        ``"poly"`` runs the certified low-rank polynomial surrogate (see
        :func:`nway_poly_plan`), for every t (t = 2 included, which then runs the t-general
        surrogate rather than :func:`tattn_numba.attention`).
    device : {"cpu", "cuda"}
        ``"cuda"`` runs t <= 2 on the tensor-attention GPU kernels of :func:`tattn_numba.attention`
        (t = 1 as t = 2 with a first key set of one row of ones), host arrays in and out; t >= 3
        has no GPU kernel yet (``ValueError``).
    **options
        With ``method="poly"``: exactly one of ``tol`` (target bound on max |Õ − O|; the
        smallest certified degree is chosen) and ``degree``, and optionally ``family``
        (``"chebyshev"`` or ``"taylor"``) and ``memory_budget`` (bytes). The exact method takes
        none.

    Returns
    -------
    O : ndarray, shape (..., n, dv)
        In the input dtype.
    state : NwayState
        For :func:`nway_attention_backward`; with ``method="poly"``, ``state.certificate`` is
        the surrogate's :class:`~tattn_numba.poly.plan.PolyPlan`.

    Raises
    ------
    TypeError
        keys/values not tuples or lists, a non-array operand, unsupported or mixed dtypes,
        non-bool ``causal``, non-real ``scale``, non-string ``method``/``device``, an unknown
        option or an option of the wrong type.
    ValueError
        Empty keys/values (t = 0), ``len(keys) != len(values)``, rank below 2, different leading
        dimensions, mismatched m_a, d or dv, empty arrays, NaN/Inf, ``causal`` with some
        ``m_a != n``, ``scale`` <= 0 or non-finite, logits or the kernels' products that could
        pass 1e300, an unknown method or device, ``device="cuda"`` with t >= 3 (no GPU kernel yet), a
        problem whose memory estimate passes ``config.MEMORY_BUDGET_BYTES`` (``memory_budget``
        for the surrogate); with ``method="poly"``: neither or both of ``tol`` and ``degree``,
        an unreachable ``tol``, a ``degree`` too low to certify (each naming the argument).

    Notes
    -----
    t = 2 is computed by :func:`tattn_numba.attention_forward` (identical results). Otherwise the
    exact streaming kernel costs Θ(n·Π m_a·(d + dv)) time and O((n + Σ m_a)·(d + dv)) extra
    memory (float64 inside, whatever the input dtype); the n×m1×…×mt tensor is never stored.
    The surrogate costs O((n + Σ m_a)·r·dv) with r = C(d + g, g) (float64 inside too).
    """
    inputs = _validate(Q, keys, values, scale, causal, method, device, options)
    if _on_pair_kernels(inputs, method, device):
        arrays, mask = _pairwise_call(inputs)
        O, pairwise = attention_forward(*arrays, scale=inputs.scale, method=method, device=device, **mask, **options)
        return O, NwayState(O=O, lse=pairwise.lse, scale=inputs.scale, causal=inputs.causal, t=inputs.t, method=method,
                            options=dict(options), certificate=pairwise.certificate, _inputs=inputs,
                            _fingerprints=_fingerprints(inputs), _pairwise=pairwise)
    if method == "poly":
        return _poly_forward(inputs, options)
    with threads_for(_flops(inputs)):
        O64, lse64 = nway_cpu.forward(inputs.query_rows(), inputs.keys, inputs.values, inputs.scale, inputs.causal,
                                      key_batch=inputs.key_batch)
    O = _cast(O64, inputs, "O", inputs.batch_shape)
    if np.shares_memory(O, O64):
        O = O.copy()
    lse = lse64.reshape(inputs.batch_shape + lse64.shape[1:]).copy()
    return O, NwayState(O=O, lse=lse, scale=inputs.scale, causal=inputs.causal, t=inputs.t, _inputs=inputs,
                        _O64=O64, _lse64=lse64, _fingerprints=_fingerprints(inputs))


def _poly_forward(inputs: _Inputs, options: dict) -> tuple[np.ndarray, NwayState]:
    with threads_for(_flops(inputs)):
        O64, lse64, plan = poly_nway.forward(inputs.for_surrogate(options.get("memory_budget")), **options)
    O = _cast(O64, inputs, "O", inputs.batch_shape)
    if np.shares_memory(O, O64):
        O = O.copy()
    lse = lse64.reshape(inputs.batch_shape + lse64.shape[1:]).copy()
    return O, NwayState(O=O, lse=lse, scale=inputs.scale, causal=inputs.causal, t=inputs.t, method="poly",
                        options=dict(options), certificate=plan, _inputs=inputs, _O64=O64, _lse64=lse64,
                        _fingerprints=_fingerprints(inputs))


def _checked_state(state: NwayState) -> _Inputs:
    """The validated inputs of ``state``; ``TypeError`` for a foreign state, ``ValueError``
    naming an operand modified since the forward."""
    if not isinstance(state, NwayState) or state._inputs is None:
        raise TypeError(f"state must be the NwayState returned by nway_attention_forward, got {type(state).__name__}")
    inputs = state._inputs
    for name, before, now in zip(inputs.names(), state._fingerprints, _fingerprints(inputs)):
        if before != now:
            raise ValueError(
                f"{name} was modified after nway_attention_forward; the saved state no longer matches it "
                "(run nway_attention_forward again, or pass a copy)"
            )
    return inputs


def _upstream(dO, inputs: _Inputs, state: NwayState) -> np.ndarray:
    """``dO`` checked against the forward's dtype and output shape, batch-flattened."""
    dO = as_float_array(dO, "dO", inputs.dtype)
    expected = inputs.batch_shape + state._O64.shape[1:]
    if dO.shape != expected:
        raise ValueError(f"dO must have the output's shape {expected} (..., n, dv), got {dO.shape}")
    return _flatten(dO)


def nway_attention_backward(state: NwayState, dO) -> NwayGrads:
    """Gradients of the forward call that produced ``state``, given the upstream ``dO``.

    Parameters
    ----------
    state : NwayState
        From :func:`nway_attention_forward`.
    dO : array_like, shape (..., n, dv)
        Upstream gradient dLoss/dO, in the forward's dtype.

    Returns
    -------
    NwayGrads
        ``(dQ, dkeys, dvalues)`` shaped and typed like the inputs.

    Raises
    ------
    TypeError
        ``state`` not from :func:`nway_attention_forward`; ``dO`` not an array of the forward's dtype.
    ValueError
        An operand modified since the forward (named); ``dO`` of the wrong shape or not finite;
        a gradient that overflows the input dtype; the memory budget.

    Notes
    -----
    δ_i = Σ_m dO[i,m]·O[i,m]; P = exp(logit − lse_i); dZ = P·(dS − δ_i) with
    dS = Σ_m dO[i,m]·Π_a Va[j_a,m]; dQ[i] = s·Σ dZ·Π_a Ka[j_a];
    dKa[j_a] = s·Σ dZ·Q[i] ∘ Π_{b≠a} Kb[j_b]; dVa[j_a] = Σ P·dO[i] ∘ Π_{b≠a} Vb[j_b].
    Time Θ(n·Π m_a·(d + dv)), P never stored. For ``method="poly"`` the same formulas with the
    surrogate's weights P̃ (low-rank, :mod:`tattn_numba.poly.nway`): time
    O((n + Σ m_a)·r·d·dv).
    """
    inputs = _checked_state(state)
    if state._pairwise is not None:
        return _pairwise_grads(attention_backward(state._pairwise, dO), state.t)
    dO = _upstream(dO, inputs, state)
    with threads_for(3 * _flops(inputs)):
        if state.method == "poly":
            dQ, dkeys, dvalues = poly_nway.backward(inputs.for_surrogate(), state._O64, state.certificate, dO)
        else:
            dQ, dkeys, dvalues = nway_cpu.backward(inputs.query_rows(), inputs.keys, inputs.values, inputs.scale,
                                                   inputs.causal, state._O64, state._lse64, dO,
                                                   key_batch=inputs.key_batch)
    heads = inputs.heads
    if heads.expands_query:
        dQ = _host.OPS.sum_batches(dQ, heads.query_batch, heads.query_entries)
    return NwayGrads(
        _cast(dQ, inputs, "dQ", heads.query_shape),
        tuple(_cast(g, inputs, f"dkeys[{a}]", heads.key_shape) for a, g in enumerate(dkeys)),
        tuple(_cast(g, inputs, f"dvalues[{a}]", heads.key_shape) for a, g in enumerate(dvalues)),
    )


def nway_attention(
    Q, keys: Sequence, values: Sequence, *, scale: float | None = None, causal: bool = False, method: str = "exact",
    device: str = "cpu", **options: Any,
) -> np.ndarray:
    """Attention of order t: each query attends to t-tuples of keys (SPEC §9).

    ``O[i] = Σ_{j1..jt} softmax(s·Σ_l Q[i,l]·Π_a Ka[j_a,l]) · (V1[j1] ∘ … ∘ Vt[jt])``; t = 1 is
    softmax attention, t = 2 :func:`tattn_numba.attention`.

    Parameters
    ----------
    Q, keys, values, scale, causal, method, device, **options
        As for :func:`nway_attention_forward`.

    Returns
    -------
    O : ndarray, shape (..., n, dv), input dtype

    Raises
    ------
    TypeError, ValueError
        See :func:`nway_attention_forward`.

    Examples
    --------
    >>> import numpy as np, tattn_numba as ta
    >>> rng = np.random.default_rng(0)
    >>> Q = rng.standard_normal((4, 3))
    >>> keys = tuple(rng.standard_normal((5, 3)) for _ in range(3))
    >>> values = tuple(rng.standard_normal((5, 2)) for _ in range(3))
    >>> ta.nway_attention(Q, keys, values).shape
    (4, 2)
    >>> ta.nway_attention(Q, keys, values, method="poly", tol=1e-6).shape
    (4, 2)
    """
    inputs = _validate(Q, keys, values, scale, causal, method, device, options)
    if _on_pair_kernels(inputs, method, device):
        arrays, mask = _pairwise_call(inputs)
        return attention(*arrays, scale=inputs.scale, method=method, device=device, **mask, **options)
    if method == "poly":
        return _poly_forward(inputs, options)[0]
    with threads_for(_flops(inputs)):
        O64, _ = nway_cpu.forward(inputs.query_rows(), inputs.keys, inputs.values, inputs.scale, inputs.causal,
                                  key_batch=inputs.key_batch, for_backward=False)
    return _cast(O64, inputs, "O", inputs.batch_shape)


def nway_attention_grad(
    Q, keys: Sequence, values: Sequence, dO, *, scale: float | None = None, causal: bool = False,
    method: str = "exact", device: str = "cpu", **options: Any,
) -> NwayGrads:
    """Gradients of ``⟨dO, nway_attention(Q, keys, values)⟩`` with respect to every operand.

    Parameters
    ----------
    Q, keys, values, scale, causal, method, device, **options
        As for :func:`nway_attention_forward`.
    dO : array_like, shape (..., n, dv)
        Upstream gradient, same dtype as the inputs.

    Returns
    -------
    NwayGrads
        ``(dQ, dkeys, dvalues)``, ``dkeys``/``dvalues`` tuples in the order given.
    """
    _, state = nway_attention_forward(Q, keys, values, scale=scale, causal=causal, method=method, device=device,
                                      **options)
    return nway_attention_backward(state, dO)


def nway_poly_plan(
    Q, keys: Sequence, values: Sequence, *, scale: float | None = None, causal: bool = False,
    tol: float | None = None, degree: int | None = None, family: str = "chebyshev", memory_budget: int | None = None,
) -> PolyPlan:
    """Inspect what ``nway_attention(..., method="poly")`` would do, without doing it.

    Parameters
    ----------
    Q, keys, values, scale, causal
        As for :func:`nway_attention_forward`.
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

    Returns
    -------
    PolyPlan
        Degree g, rank r = C(d + g, g) (the same for every t), per-row radii
        R_i = min(s·Σ_l |Q[i,l]|·Π_a max|Ka[:,l]|, s·‖Q_i‖₂·Π_a max_j‖Ka_j‖_{2t}), per-row certified
        relative errors ε_i and κ_i = 2ε_i/(1 − ε_i), and ``output_bound`` (..., n, dv): a
        certified bound on |Õ − O| entrywise for the output as returned (input dtype), the
        polynomial's κ_i·range_m/2 (range over the tuple products Π_a Va[j_a, m]) plus float64
        rounding (Π m_a tuples, or (i + 1)^t causal) and the final cast. Cost
        O((n + Σ m_a)·(d + dv)) per batch entry.

    Raises
    ------
    TypeError, ValueError
        As :func:`nway_attention_forward` with ``method="poly"``.

    Examples
    --------
    >>> import numpy as np, tattn_numba as ta
    >>> rng = np.random.default_rng(0)
    >>> Q = rng.uniform(-1, 1, (8, 3))
    >>> keys = tuple(rng.uniform(-1, 1, (6, 3)) for _ in range(3))
    >>> values = tuple(rng.uniform(-1, 1, (6, 2)) for _ in range(3))
    >>> plan = ta.nway_poly_plan(Q, keys, values, tol=1e-6)
    >>> plan.max_output_bound <= 1e-6
    True
    """
    options = dict(tol=tol, degree=degree, family=family, memory_budget=memory_budget)
    inputs = _validate(Q, keys, values, scale, causal, "poly", "cpu", {})
    return poly_nway.make_nway_plan(inputs.for_surrogate(memory_budget), **options)


def nway_poly_gradient_bounds(state: NwayState, dO) -> NwayGrads:
    """Certified entrywise bounds on |surrogate gradient − exact gradient| for ``dO``.

    Parameters
    ----------
    state : NwayState
        From ``nway_attention_forward(..., method="poly")`` (any t, causal or not, float32 or
        float64).
    dO : array_like, shape (..., n, dv)
        The upstream gradient given to :func:`nway_attention_backward`.

    Returns
    -------
    NwayGrads
        ``(dQ, dkeys, dvalues)`` bounds shaped like the gradients, float64: every entry of
        |nway_attention_backward(state, dO) − exact gradient| is at most its bound, float64
        rounding and the cast to the input dtype included.

    Raises
    ------
    TypeError
        ``state`` not from ``nway_attention_forward(..., method="poly")``; ``dO`` of another dtype.
    ValueError
        An operand modified since the forward; ``dO`` of the wrong shape or not finite.

    Notes
    -----
    The t = 2 argument of :func:`tattn_numba.poly_gradient_bounds` (docs/surrogate.md) with
    products over the other key sets: with |P̃ − P| <= κ_i·P and
    c_i = κ_i·(D_i + |δ̂_i|) + Δδ_i (D_i = Σ_m |dO[i,m]|·Π_a max|Va[:,m]|),
    |ΔdQ[i,l]| <= s·c_i·Π_a max|Ka[:,l]|, |ΔdKa[j,l]| <= s·Π_{b≠a} max|Kb[:,l]|·Σ_i c_i·|Q[i,l]|,
    |ΔdVa[j,m]| <= Π_{b≠a} max|Vb[:,m]|·Σ_i κ_i·|dO[i,m]|, plus the backward's rounding
    (:func:`tattn_numba.poly.rounding.tuple_gradient_rounding`). A-priori in P, so the key-side
    bounds are loose by the spread of the marginals. Grouped heads and a broadcast Q: the bounds
    of the entries sharing a key entry (or a Q entry) add, with the rounding of the backward's
    float64 sums over them, as for :func:`tattn_numba.poly_gradient_bounds`.
    Cost O((n + Σ m_a)·d·dv).
    """
    inputs = _checked_state(state)
    if state.method != "poly":
        raise TypeError("state must come from nway_attention_forward(..., method='poly')")
    if state._pairwise is not None:  # a GPU state: poly_gradient_bounds says what to do instead
        return _pairwise_grads(poly_gradient_bounds(state._pairwise, dO), state.t)
    dO = _upstream(dO, inputs, state)
    dQ, dkeys, dvalues = poly_nway.gradient_bounds(inputs.for_surrogate(), state.certificate, state._O64,
                                                   dO.astype(np.float64), lse=state._lse64)
    query_shape, key_shape = inputs.heads.query_shape, inputs.heads.key_shape
    return NwayGrads(dQ.reshape(query_shape + dQ.shape[1:]), tuple(g.reshape(key_shape + g.shape[1:]) for g in dkeys),
                     tuple(g.reshape(key_shape + g.shape[1:]) for g in dvalues))
