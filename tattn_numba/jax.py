"""JAX adapter: tensor attention as a differentiable, jit-compatible JAX function.

This module is imported lazily (``import tattn_numba`` never imports jax); import it explicitly
as ``tattn_numba.jax``. :func:`tensor_attention` is a :func:`jax.custom_vjp` function whose
forward and backward call the core CPU kernels through :func:`jax.pure_callback`.

Public API
----------
tensor_attention
    ``O = tensor_attention(Q, K1, K2, V1, V2, scale=..., causal=..., method=..., **opts)``.

Notes
-----
* Works eagerly and under :func:`jax.jit` (``scale``, ``causal``, ``method`` and the method
  options are static Python values) and :func:`jax.vmap` (the mapped axis becomes a leading
  batch dimension of the core call). Reverse mode (``jax.grad``, ``jax.vjp``) is supported;
  forward mode (``jax.jvp``) is not (``custom_vjp``).
* float32 and float64 (float64 needs ``jax.config.update("jax_enable_x64", True)``).
* The residuals are the five inputs; the backward callback runs the core's
  :func:`tattn_numba.attention_grad`, which recomputes the forward row statistics (the core's
  :class:`~tattn_numba.AttentionState` is a host object and cannot be a JAX residual). The
  backward therefore costs one extra forward pass.
* Shapes, dtypes, ``scale``, ``causal``, ``method`` and the options are checked when the
  function is traced, with the core's ``TypeError``/``ValueError`` naming the argument. Checks
  that need values (NaN/Inf) run at trace time for concrete (eager) inputs; under ``jit`` they
  run inside the callback, where JAX re-raises them wrapped in its own runtime error.
* The computation runs on the host CPU whatever JAX's default device is.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from tattn_numba.jax import tensor_attention
>>> keys = jax.random.split(jax.random.PRNGKey(0), 5)
>>> Q, K1, K2, V1, V2 = (jax.random.normal(k, (2, 6, 4)) for k in keys)
>>> O = jax.jit(lambda *a: tensor_attention(*a, causal=True))(Q, K1, K2, V1, V2)
>>> O.shape, O.dtype
((2, 6, 4), dtype('float32'))
>>> dQ = jax.grad(lambda q: tensor_attention(q, K1, K2, V1, V2).sum())(Q)
>>> dQ.shape
(2, 6, 4)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import check_attention_inputs
from .attention import attention, attention_grad
from .mask import Mask, check_mask

__all__ = ["tensor_attention"]

_OPERANDS = ("Q", "K1", "K2", "V1", "V2")


def _host_view(x):
    """What the trace-time check sees: values when concrete, a zero stand-in for a tracer."""
    if isinstance(x, jax.core.Tracer):
        return np.zeros(x.shape, dtype=x.dtype)
    if isinstance(x, jax.Array):
        return np.asarray(x)
    return x  # numpy arrays, lists, ...: the core judges (and names) them


def _check(args, scale, mask, logits, method, opts):
    """Raise the core's errors at trace time; return the validated inputs."""
    inputs = check_attention_inputs(*(_host_view(x) for x in args), scale, False, mask=mask, logits=logits)
    _, n, d = inputs.Q.shape
    dv = inputs.V1.shape[-1]
    # method, device and option names/values: a 1-row problem of the same widths, cheap.
    tiny = [np.zeros((1, w), dtype=inputs.dtype) for w in (d, d, d, dv, dv)]
    attention(*tiny, scale=inputs.scale, logits=logits, method=method, **opts)
    return inputs


def _build(scale, mask, logits, method, opts, out_struct):
    kw = dict(scale=scale, mask=mask, logits=logits, method=method, **opts)

    def fwd_host(Q, K1, K2, V1, V2):
        return np.asarray(attention(Q, K1, K2, V1, V2, **kw))

    def bwd_host(Q, K1, K2, V1, V2, dO):
        return tuple(np.asarray(g) for g in attention_grad(Q, K1, K2, V1, V2, dO, **kw))

    @jax.custom_vjp
    def f(Q, K1, K2, V1, V2):
        return jax.pure_callback(fwd_host, out_struct, Q, K1, K2, V1, V2, vmap_method="broadcast_all")

    def f_fwd(Q, K1, K2, V1, V2):
        return f(Q, K1, K2, V1, V2), (Q, K1, K2, V1, V2)

    def f_bwd(res, dO):
        shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in res)
        return jax.pure_callback(bwd_host, shapes, *res, dO, vmap_method="broadcast_all")

    f.defvjp(f_fwd, f_bwd)
    return f


def tensor_attention(
    Q, K1, K2, V1, V2, *, scale: float | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", method: str = "exact", **opts: Any,
):
    """Differentiable tensor (2-simplicial) attention on JAX arrays.

    Parameters
    ----------
    Q : jax.Array, shape (..., H, n, d)
    K1, K2 : jax.Array, shape (..., Hk, m1, d) and (..., Hk, m2, d)
    V1, V2 : jax.Array, shape (..., Hk, m1, dv) and (..., Hk, m2, dv)
        float32 or float64 (one dtype); grouped heads (H a multiple of Hk) and broadcasting as
        in :func:`tattn_numba.attention`. NumPy arrays are accepted too.
    scale : float, optional
        Logit scale; ``None`` means ``1/d``. Static (a Python number, not a traced value).
    causal : bool
        Keep only pairs ``j1, j2 <= i`` (needs ``n == m1 == m2``). Static.
    mask : tattn_numba.Mask, optional
        A general mask instead of ``causal`` (as in :func:`tattn_numba.attention`). Static.
    window : (int, int), optional
        Causal sliding windows (as in :func:`tattn_numba.attention`). Static.
    logits : {"trilinear", "determinant"}
        The logit form (as in :func:`tattn_numba.attention`). Static.
    method : {"exact", "poly"}
        ``"poly"`` is the certified polynomial surrogate (options ``degree=``, ``tol=``,
        ``family=``). Static.
    **opts
        Method options (static), forwarded to the core.

    Returns
    -------
    jax.Array, shape (..., H, n, dv)
        In the input dtype (leading dimensions broadcast as in the core); differentiable in reverse mode with respect to all five operands.

    Raises
    ------
    TypeError, ValueError
        The core's errors for malformed input, naming the argument.

    Examples
    --------
    >>> import numpy as np
    >>> from tattn_numba.jax import tensor_attention
    >>> rng = np.random.default_rng(0)
    >>> Q, K1, K2, V1, V2 = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(5))
    >>> tensor_attention(Q, K1, K2, V1, V2).shape
    (5, 3)
    """
    args = (Q, K1, K2, V1, V2)
    mask = check_mask(mask, causal, window)
    inputs = _check(args, scale, mask, logits, method, opts)
    # float64 NumPy input becomes float32 here when x64 is disabled (JAX's rule), all alike.
    # NumPy subclasses the core accepted (np.matrix, a MaskedArray with nothing masked) as plain
    # arrays: JAX refuses masked arrays outright, without naming the argument.
    args = tuple(jnp.asarray(np.asarray(x) if isinstance(x, np.ndarray) else x) for x in args)
    out_struct = jax.ShapeDtypeStruct(inputs.batch_shape + args[0].shape[-2:-1] + args[3].shape[-1:], args[0].dtype)
    return _build(scale, mask, logits, method, opts, out_struct)(*args)
