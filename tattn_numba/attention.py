"""Public entry points: tensor attention and its gradient.

Tensor (2-simplicial) attention maps Q (n, d), K1 (m1, d), K2 (m2, d), V1 (m1, dv), V2 (m2, dv) to

    O[i, m] = Σ_{j1, j2} softmax_{(j1, j2)}(s·⟨Q_i, K1_j1 ∘ K2_j2⟩) · V1[j1, m] · V2[j2, m],

the forward pass of Alman–Song (2023); the gradient follows Liang–Shi–Song–Zhou (2024).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _registry, config
from ._threads import threads_for
from ._validation import (AttentionInputs, cast_result, check_attention_inputs, check_memory, check_memory_budget,
                          check_upstream, to_caller)
from .logits import lift_matrices, lifted_width
from .mask import Mask

__all__ = ["AttentionGrads", "AttentionState", "attention", "attention_grad", "attention_forward", "attention_backward"]


class AttentionGrads(NamedTuple):
    """Gradients of a scalar loss with respect to the five attention operands.

    Each field has the shape and dtype of the corresponding input.
    """

    dQ: np.ndarray
    dK1: np.ndarray
    dK2: np.ndarray
    dV1: np.ndarray
    dV2: np.ndarray


@dataclass(frozen=True)
class AttentionState:
    """What :func:`attention_forward` saves for :func:`attention_backward`.

    Attributes
    ----------
    O : ndarray, shape (..., n, dv)
        The forward output, in the input dtype (a device array for GPU inputs); the array
        :func:`attention_forward` returns, never the memory the backward reads.
    lse : ndarray, shape (..., n), float64 (a device array for GPU inputs)
        Row log-normaliser in natural-log units: ``lse[i] = log Σ_{j1,j2} exp(logit[i,j1,j2])``
        where ``logit`` is the scaled logit of the form (``scale·⟨Q_i, K1_j1 ∘ K2_j2⟩`` for
        ``logits="trilinear"``) and the sum runs over the pairs the mask allows. ``P[i,j1,j2] = exp(logit[i,j1,j2] − lse[i])``.
    scale, mask, logits, method, device, options
        The settings of the forward call, reused by the backward (``causal`` is
        ``mask.causal``).
    certificate : PolyPlan or None
        For ``method="poly"``, the plan with its certified error bounds (degree, rank,
        per-row radii, ``output_bound``); None for the exact method. For
        ``logits="determinant"`` it is the plan of the lifted trilinear problem of width 2d,
        whose rank and radii are those of the lift.

    Notes
    -----
    The state refers to the caller's arrays (no copy) together with a CRC-32 fingerprint of
    each; :func:`attention_backward` recomputes the fingerprints and raises ``ValueError`` if an
    input was modified in between, instead of returning gradients of a different problem.
    (Fingerprints cost ~30 ms per 64 MB; copies cost ~140 ms here and double the memory.)
    GPU inputs get a 64-bit hash computed on the GPU instead of the CRC-32.
    """

    O: np.ndarray
    lse: np.ndarray
    scale: float
    mask: Mask
    method: str
    device: str
    options: dict = field(default_factory=dict)
    certificate: Any = None
    logits: str = "trilinear"
    _saved: Any = field(default=None, repr=False)
    _inputs: AttentionInputs | None = field(default=None, repr=False)
    _kernel_inputs: AttentionInputs | None = field(default=None, repr=False)
    _O_impl: Any = field(default=None, repr=False)
    _lse_impl: Any = field(default=None, repr=False)
    _fingerprints: tuple = field(default=(), repr=False)

    @property
    def causal(self) -> bool:
        """Whether the forward used the causal mask."""
        return self.mask.causal


_OPERANDS = ("Q", "K1", "K2", "V1", "V2")


def _fingerprints(inputs: AttentionInputs) -> tuple[int, ...]:
    """A fingerprint of each operand the caller could still modify (CRC-32 on the host, a 64-bit
    hash computed on the GPU for GPU operands; copied host inputs of a GPU call get none)."""
    return inputs.ops.fingerprints([getattr(inputs, name) for name in _OPERANDS], inputs.host_io)


def operand_copy_bytes(inputs: AttentionInputs) -> int:
    """Bytes :func:`kernel_inputs` allocates for validated ``inputs``, from their shapes alone: Q
    expanded to the B output entries where it broadcasts, then Q, K1 and K2 lifted to width d'
    (0 for the trilinear form with Q not broadcast)."""
    Bq, n, d = inputs.Q.shape
    query_entries, elements = Bq, 0
    if inputs.heads.expands_query:
        query_entries = len(inputs.key_batch)
        elements += query_entries * n * d
    if inputs.logits != "trilinear":
        width = lifted_width(inputs.logits, d)
        elements += (query_entries * n + inputs.K1.shape[0] * (inputs.K1.shape[1] + inputs.K2.shape[1])) * width
    return elements * np.dtype(inputs.dtype).itemsize


def kernel_inputs(inputs: AttentionInputs, memory_budget: int | None = None) -> AttentionInputs:
    """What the implementations compute on: Q expanded to the output's B batch entries where it
    broadcasts (:class:`tattn_numba.heads.HeadLayout`), and Q, K1, K2 lifted to the trilinear
    form of ``inputs.logits`` (:func:`tattn_numba.logits.lift_matrices`; width d' = 2d for the
    determinant). The keys and values are never repeated: the implementations read entry
    ``inputs.key_batch[b]`` for output entry ``b``.

    The copies are refused (``ValueError``) before they are allocated when they alone pass the
    memory budget (``memory_budget``, the surrogate's option, else ``config.MEMORY_BUDGET_BYTES``);
    their size (:func:`operand_copy_bytes`) is returned as ``held_bytes``, which the
    implementations add to their own estimates."""
    budget = config.MEMORY_BUDGET_BYTES if memory_budget is None else check_memory_budget(memory_budget)
    held = operand_copy_bytes(inputs)
    if held:
        check_memory(held, f"{inputs.copied_operands} ({inputs.logits} logits, Q {tuple(inputs.Q.shape)}, "
                           f"K1 {tuple(inputs.K1.shape)}, K2 {tuple(inputs.K2.shape)})", budget)
    ops = inputs.ops
    Q, K1, K2 = inputs.Q, inputs.K1, inputs.K2
    if inputs.heads.expands_query:
        Q = ops.take_batches(Q, inputs.heads.query_batch)
    if inputs.logits != "trilinear":
        MQ, MK1, MK2 = lift_matrices(inputs.logits, Q.shape[2])
        Q, K1, K2 = ops.right_multiply(Q, MQ), ops.right_multiply(K1, MK1), ops.right_multiply(K2, MK2)
    return inputs._replace(Q=Q, K1=K1, K2=K2, held_bytes=held)


def _caller_gradients(inputs: AttentionInputs, grads) -> AttentionGrads:
    """The gradients of the kernel inputs (float64, batch-flattened) mapped back to the caller's
    operands: the transposed lift, dQ summed over the batch entries that share a query entry,
    each cast to the input dtype with its operand's leading dimensions."""
    ops = inputs.ops
    dQ, dK1, dK2, dV1, dV2 = grads
    if inputs.logits != "trilinear":
        MQ, MK1, MK2 = lift_matrices(inputs.logits, inputs.Q.shape[2])
        dQ, dK1, dK2 = ops.right_multiply(dQ, MQ.T), ops.right_multiply(dK1, MK1.T), ops.right_multiply(dK2, MK2.T)
    heads = inputs.heads
    if heads.expands_query:
        dQ = ops.sum_batches(dQ, heads.query_batch, heads.query_entries)
    shapes = (heads.query_shape,) + (heads.key_shape,) * 4
    return AttentionGrads(*(cast_result(g, inputs, name, shape)
                            for name, g, shape in zip(AttentionGrads._fields, (dQ, dK1, dK2, dV1, dV2), shapes)))


def _prepare(Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, options):
    impl = _registry.lookup(method, device)
    _registry.check_options(impl, method, options)
    inputs = check_attention_inputs(Q, K1, K2, V1, V2, scale, causal, device, mask, window, logits)
    return impl, inputs


def _exact_flops(inputs: AttentionInputs) -> float:
    """2·B·(pairs inside the mask)·(d + dv) of the kernel inputs: the exact forward's work, the
    yardstick for 'small' (a problem small for the exact kernel is small for the surrogate too)."""
    B, n, d = inputs.Q.shape
    m1, m2 = inputs.K1.shape[1], inputs.K2.shape[1]
    pairs = float(n) * m1 * m2
    if not inputs.mask.is_full:
        counts1, counts2 = inputs.mask.pair_counts(n, m1, m2)
        pairs = float(counts1 @ counts2)
    return 2.0 * B * pairs * (d + inputs.V1.shape[2])


def _forward(Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, options, for_backward):
    """Validate, run the implementation's forward, cast the output; shared by the entry points."""
    impl, inputs = _prepare(Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, options)
    computed = kernel_inputs(inputs, options.get("memory_budget"))
    with threads_for(_exact_flops(computed)):
        O_impl, lse, certificate, saved = impl.forward(computed, for_backward=for_backward, **options)
    O = cast_result(O_impl, inputs, "O", inputs.batch_shape)
    return inputs, computed, O_impl, O, lse, certificate, saved


def _private(x, internal, inputs: AttentionInputs):
    """``x`` itself, or a copy of it when it shares memory with ``internal`` (an array the
    backward reads)."""
    return inputs.ops.private(x, internal, inputs.host_io)


def attention_forward(
    Q, K1, K2, V1, V2, *, scale: float | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", method: str = "exact", device: str = "cpu",
    **method_options: Any,
) -> tuple[np.ndarray, AttentionState]:
    """Tensor attention that also returns the state its backward pass needs.

    Parameters
    ----------
    Q : array_like, shape (..., H, n, d)
    K1 : array_like, shape (..., Hk, m1, d)
    K2 : array_like, shape (..., Hk, m2, d)
    V1 : array_like, shape (..., Hk, m1, dv)
    V2 : array_like, shape (..., Hk, m2, dv)
        float32 or float64, one dtype for all, finite. K1, K2, V1, V2 share their leading
        dimensions. Q's last leading axis is its heads: ``H`` a multiple of ``Hk`` gives grouped
        heads (query head h uses key/value head ``h // (H // Hk)``, PyTorch's ``enable_gqa``
        convention; ``Hk = 1`` is multi-query attention), without repeating K or V. Every other
        leading axis broadcasts as in NumPy. Each output leading index is an independent
        problem; they are processed in parallel.
    scale : float, optional
        Logit scale s; ``None`` means ``1/d`` (the convention of the theory papers;
        2-simplicial transformers use ``1/sqrt(d)``).
    causal : bool
        Keep only pairs with ``j1 <= i`` and ``j2 <= i``; needs ``n == m1 == m2``. Shorthand for
        ``mask=Mask(causal=True)``.
    mask : Mask, optional
        Which key pairs each query row sees (:class:`tattn_numba.Mask`); None is the full mask,
        or the one of ``causal`` / ``window`` (giving ``mask`` with either raises ``ValueError``).
    window : (int, int), optional
        Causal sliding windows: row i sees ``i − w1 < j1 <= i`` and ``i − w2 < j2 <= i``
        (FBGEMM's and Roy et al.'s convention; needs ``n == m1 == m2``; implies ``causal``).
        The exact kernels' work is O(n·w1·w2·(d + dv)).
    logits : {"trilinear", "determinant"}
        The logit form (:mod:`tattn_numba.logits`): ``⟨Q_i, K1_j1 ∘ K2_j2⟩``, or Roy et al.'s
        rotation-invariant ``Σ_c det[q_c; k1_c; k2_c]`` over 3-coordinate chunks (plus the
        trilinear product of the ``d mod 3`` remaining coordinates), computed as a trilinear
        product of width ``2d`` (about twice the time). The default scale stays ``1/d``.
    method : {"exact", "poly"}
        Implementation, looked up in the ``(method, device)`` registry.
    device : {"cpu", "cuda"}
        Where to compute. With ``"cuda"`` the operands are all host arrays (copied to the GPU,
        results copied back) or all GPU arrays (``__cuda_array_interface__``; used in place,
        results stay on the GPU as numba device arrays); a mixture raises ``ValueError``.
    **method_options
        Options of the chosen method; unknown options raise ``TypeError``.

    Returns
    -------
    O : ndarray, shape (..., n, dv)
        Output in the input dtype.
    state : AttentionState
        Pass to :func:`attention_backward` to get gradients without recomputing the
        forward statistics.

    Raises
    ------
    TypeError, ValueError
        For malformed input; see :func:`attention`.

    Notes
    -----
    The exact method costs Θ(n·m1·m2·(d + dv)) time and O((n + m1 + m2)·(d + dv)) memory:
    logits are recomputed tile by tile with an online softmax and never stored.

    ``O`` (also ``state.O``) and ``state.lse`` never share memory with what
    :func:`attention_backward` reads: modifying them in place (``O += residual``) does not
    change the gradients. For float64 this costs one copy of O and lse.
    """
    inputs, computed, O_impl, O, lse, certificate, saved = _forward(
        Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, method_options, for_backward=True
    )
    # What the caller gets must not share memory with what the backward reads (O_impl, lse):
    # an in-place `O += residual` would otherwise silently change the gradients.
    O = _private(O, O_impl, inputs)
    lse_out = _private(to_caller(lse, inputs).reshape(inputs.batch_shape + tuple(lse.shape[1:])), lse, inputs)
    state = AttentionState(
        O=O, lse=lse_out, scale=inputs.scale, mask=inputs.mask, logits=inputs.logits,
        method=method, device=device, options=dict(method_options), certificate=certificate,
        _saved=saved, _inputs=inputs, _kernel_inputs=computed, _O_impl=O_impl, _lse_impl=lse,
        _fingerprints=_fingerprints(inputs),
    )
    return O, state


class SavedForward(NamedTuple):
    """What a forward call kept for its backward: the validated, batch-flattened ``inputs``,
    the kernel inputs the implementation computed on (:func:`kernel_inputs`) and the float64
    output ``O`` (B, n, dv) and row normaliser ``lse`` (B, n) the backward reads (on the compute
    device)."""

    inputs: AttentionInputs
    computed: AttentionInputs
    O: Any
    lse: Any


def saved_forward(state: AttentionState) -> SavedForward:
    """The :class:`SavedForward` of ``state``, after checking that none of the caller's
    operands changed since the forward (``ValueError`` naming the operand) and that ``state``
    comes from :func:`attention_forward` (``TypeError``). For code that extends the backward
    (the surrogate's gradient bounds) without reaching into the state's fields."""
    if not isinstance(state, AttentionState) or state._inputs is None:
        raise TypeError(f"state must be the AttentionState returned by attention_forward, got {type(state).__name__}")
    inputs = state._inputs
    for name, before, now in zip(_OPERANDS, state._fingerprints, _fingerprints(inputs)):
        if before != now:
            raise ValueError(
                f"{name} was modified after attention_forward; the saved state no longer matches it "
                "(run attention_forward again, or pass a copy)"
            )
    return SavedForward(inputs, state._kernel_inputs, state._O_impl, state._lse_impl)


def attention_backward(state: AttentionState, dO) -> AttentionGrads:
    """Gradients of the forward call that produced ``state``, given the upstream ``dO``.

    Parameters
    ----------
    state : AttentionState
        From :func:`attention_forward`.
    dO : array_like, shape (..., n, dv)
        Upstream gradient dLoss/dO, same dtype as the forward inputs.

    Returns
    -------
    AttentionGrads
        ``(dQ, dK1, dK2, dV1, dV2)``, each shaped and typed like its input.

    Notes
    -----
    Implements SPEC §2: δ = rowsum(dO ∘ O), dZ = P ∘ (dS − δ) with dS[i,j1,j2] =
    Σ_m dO[i,m] V1[j1,m] V2[j2,m]. The exact method costs Θ(n·m1·m2·(d + dv)) and never
    stores P.
    """
    inputs, computed, O_impl, lse_impl = saved_forward(state)
    dO = check_upstream(dO, inputs)
    impl = _registry.lookup(state.method, state.device)
    with threads_for(3 * _exact_flops(computed)):
        grads = impl.backward(computed, O_impl, lse_impl, state.certificate, state._saved, dO)
    return _caller_gradients(inputs, grads)


def attention(
    Q, K1, K2, V1, V2, *, scale: float | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", method: str = "exact", device: str = "cpu",
    **method_options: Any,
) -> np.ndarray:
    """Tensor (2-simplicial) attention.

    ``O[i] = Σ_{j1,j2} P[i,j1,j2] · (V1[j1] ∘ V2[j2])`` with
    ``P[i] = softmax_{(j1,j2)}(scale · ⟨Q[i], K1[j1] ∘ K2[j2]⟩)`` (Alman–Song 2023).

    Parameters
    ----------
    Q : array_like, shape (..., H, n, d)
    K1, K2 : array_like, shape (..., Hk, m1, d) and (..., Hk, m2, d)
    V1, V2 : array_like, shape (..., Hk, m1, dv) and (..., Hk, m2, dv)
        float32 or float64 (one dtype for all), finite, non-empty; grouped heads and
        broadcasting as in :func:`attention_forward`.
    scale : float, optional
        Logit scale; ``None`` means ``1/d``.
    causal, mask, window
        Only pairs with ``j1 <= i`` and ``j2 <= i`` (needs ``n == m1 == m2``); causal sliding
        windows ``(w1, w2)``; a general :class:`tattn_numba.Mask` (see :func:`attention_forward`).
    logits : {"trilinear", "determinant"}
        The logit form (see :func:`attention_forward`).
    method : {"exact", "poly"}
        ``"exact"``: streaming online-softmax kernel, Θ(n·m1·m2·(d + dv)) time,
        O((n + m1 + m2)·(d + dv)) memory. ``"poly"``: the certified low-rank surrogate
        (options ``tol`` or ``degree``, ``family``, ``memory_budget``).
    device : {"cpu", "cuda"}
        See :func:`attention_forward`; GPU inputs give GPU results.
    **method_options
        Method-specific options; unknown ones raise ``TypeError``.

    Returns
    -------
    O : ndarray, shape (..., n, dv), input dtype

    Raises
    ------
    TypeError
        Non-array input; dtype other than float32/float64; mixed dtypes; non-bool ``causal``;
        a ``window`` that is not a pair of ints; non-real ``scale``; non-string ``logits``;
        non-string or unknown-option ``method``.
    ValueError
        Rank < 2, mismatched dimensions, query heads not a multiple of the key/value heads,
        leading dimensions that do not broadcast, a window entry below 1, an unknown ``logits``,
        empty arrays, NaN/Inf, ragged nested lists, a
        ``numpy.ma.MaskedArray`` with masked entries (masks are not supported: pass
        ``.filled(value)``; one with nothing masked is used as its data), ``causal`` or ``window``
        with unequal lengths, ``scale`` ≤ 0 or non-finite, unknown ``method`` or ``device``, host and GPU
        operands mixed, a non-contiguous GPU array, logits (or the exact kernels' products
        scale·Q∘K1, scale·Q∘K2) that could pass 1e300.
    CUDAUnavailableError
        ``device="cuda"`` without numba-cuda or without a usable GPU.

    Notes
    -----
    NumPy subclasses are used as plain arrays: an ``np.matrix`` operand is its 2-D array.

    Examples
    --------
    >>> import numpy as np, tattn_numba as ta
    >>> rng = np.random.default_rng(0)
    >>> Q, K1, K2, V1, V2 = (rng.standard_normal((4, 3)) for _ in range(5))
    >>> ta.attention(Q, K1, K2, V1, V2).shape
    (4, 3)
    """
    return _forward(Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, method_options,
                    for_backward=False)[3]


def attention_grad(
    Q, K1, K2, V1, V2, dO, *, scale: float | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", method: str = "exact", device: str = "cpu",
    **method_options: Any,
) -> AttentionGrads:
    """Gradients of ``⟨dO, attention(Q, K1, K2, V1, V2)⟩`` with respect to the five operands.

    Runs the forward pass (for the row statistics) and then the backward pass; use
    :func:`attention_forward` and :func:`attention_backward` to keep the forward output.

    Parameters
    ----------
    Q, K1, K2, V1, V2, scale, causal, mask, window, logits, method, device, **method_options
        As for :func:`attention`.
    dO : array_like, shape (..., n, dv)
        Upstream gradient, same dtype as the inputs.

    Returns
    -------
    AttentionGrads
        Named tuple ``(dQ, dK1, dK2, dV1, dV2)`` shaped like the inputs (SPEC §2;
        Liang–Shi–Song–Zhou 2024); with grouped heads the key and value gradients are summed
        over each group, with a broadcast Q its gradient over the broadcast axes.
    """
    _, state = attention_forward(
        Q, K1, K2, V1, V2, scale=scale, causal=causal, mask=mask, window=window, logits=logits, method=method,
        device=device, **method_options,
    )
    return attention_backward(state, dO)
