"""PyTorch adapter: tensor attention as a differentiable ``torch`` operation.

This module is imported lazily (``import tattn_numba`` never imports torch); import it
explicitly as ``tattn_numba.torch``. It wraps :func:`tattn_numba.attention_forward` and
:func:`tattn_numba.attention_backward` in a :class:`torch.autograd.Function`.

Public API
----------
tensor_attention
    Functional form: ``O = tensor_attention(Q, K1, K2, V1, V2, scale=..., causal=..., method=...)``.
TensorAttentionFunction
    The :class:`torch.autograd.Function` behind it (first-order gradients only).
TensorAttention
    A small :class:`torch.nn.Module` layer: projections, heads, tensor attention, output projection.

Notes
-----
* CPU tensors only, float32 or float64. Contiguous CPU tensors are handed to the core without a
  copy (``tensor.detach().numpy()`` shares memory) and results come back via
  ``torch.from_numpy``; non-contiguous tensors are made contiguous by the core.
* Tensors on any other device (CUDA, meta, ...) raise ``ValueError`` naming the argument and its
  device: the autograd path runs on CPU tensors (the core's CUDA kernels are reached with
  ``tattn_numba.attention(..., device="cuda")`` on detached CUDA tensors, without autograd).
  Move inputs with ``.cpu()``.
* Malformed input raises the core's ``TypeError``/``ValueError`` naming the argument, unchanged.
* The core fingerprints the inputs at forward time; modifying an input tensor in place between
  the forward and the backward raises ``ValueError`` in the backward.
* The output may be modified in place (``O += residual``): the backward reads the core's own
  copy of the forward output, never the returned tensor's memory, so the gradients are those
  of the out-of-place ``O = O + residual``.
* Double backward (gradients of gradients) is not supported.

Examples
--------
>>> import torch
>>> from tattn_numba.torch import tensor_attention, TensorAttention
>>> g = torch.Generator().manual_seed(0)
>>> Q, K1, K2, V1, V2 = (torch.randn(2, 8, 4, generator=g, dtype=torch.float64, requires_grad=True)
...                      for _ in range(5))
>>> O = tensor_attention(Q, K1, K2, V1, V2, causal=True)
>>> O.shape
torch.Size([2, 8, 4])
>>> O.sum().backward()
>>> Q.grad.shape
torch.Size([2, 8, 4])
>>> layer = TensorAttention(embed_dim=16, num_heads=2)
>>> layer(torch.randn(3, 5, 16)).shape
torch.Size([3, 5, 16])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .attention import attention, attention_backward, attention_forward
from .logits import check_logits
from .mask import Mask, check_mask

__all__ = ["TensorAttention", "TensorAttentionFunction", "tensor_attention"]

_OPERANDS = ("Q", "K1", "K2", "V1", "V2")
_SUPPORTED = (torch.float32, torch.float64)


def _to_numpy(x, name: str):
    """A NumPy view of a CPU tensor (no copy); anything else is passed through for the core to judge."""
    if not isinstance(x, torch.Tensor):
        return x
    device = x.device
    if device.type != "cpu":
        raise ValueError(
            f"{name} is a {device.type.upper()} tensor (device={device}); tattn_numba.torch supports CPU tensors only: move it "
            "with .cpu(), or call tattn_numba.attention(..., device='cuda') on detached CUDA tensors"
        )
    if x.dtype not in _SUPPORTED:
        # The core's message, raised here because .numpy() fails on some dtypes (bfloat16).
        raise TypeError(f"{name} must have dtype float32 or float64, got {str(x.dtype).removeprefix('torch.')}")
    return x.detach().resolve_conj().resolve_neg().numpy()


class TensorAttentionFunction(torch.autograd.Function):
    """``torch.autograd.Function`` over the core forward/backward.

    Call as ``TensorAttentionFunction.apply(Q, K1, K2, V1, V2, scale, causal, method, options)``
    with ``options`` a dict of keywords for :func:`tattn_numba.attention_forward` (``mask``,
    ``window``, ``logits``, and the method options ``degree``, ``tol``, ``family`` for
    ``"poly"``); prefer :func:`tensor_attention`. Only first-order gradients are supported.
    """

    @staticmethod
    def forward(ctx, Q, K1, K2, V1, V2, scale, causal, method, options):
        arrays = [_to_numpy(x, name) for x, name in zip((Q, K1, K2, V1, V2), _OPERANDS)]
        opts = dict(options or {})
        if any(ctx.needs_input_grad[:5]):
            # The returned tensor wraps O's memory, which the core guarantees the backward never
            # reads, so in-place ops on the output (legal in autograd) keep the gradients right.
            O, state = attention_forward(*arrays, scale=scale, causal=causal, method=method, **opts)
            ctx.state = state
        else:  # no gradient wanted: skip the state (and its input fingerprints)
            O = attention(*arrays, scale=scale, causal=causal, method=method, **opts)
            ctx.state = None
        return torch.from_numpy(np.ascontiguousarray(O))

    @staticmethod
    @once_differentiable
    def backward(ctx, dO):
        state = ctx.state
        if state is None:  # pragma: no cover - autograd does not call backward then
            return (None,) * 9
        grads = attention_backward(state, _to_numpy(dO.contiguous(), "dO"))
        out = tuple(
            torch.from_numpy(np.ascontiguousarray(g)) if need else None
            for g, need in zip(grads, ctx.needs_input_grad[:5])
        )
        return out + (None,) * 4


def tensor_attention(
    Q, K1, K2, V1, V2, *, scale: float | None = None, causal: bool = False, mask: Mask | None = None,
    window: tuple[int, int] | None = None, logits: str = "trilinear", method: str = "exact", **opts: Any,
) -> torch.Tensor:
    """Differentiable tensor (2-simplicial) attention on CPU torch tensors.

    Parameters
    ----------
    Q : torch.Tensor, shape (..., H, n, d)
    K1, K2 : torch.Tensor, shape (..., Hk, m1, d) and (..., Hk, m2, d)
    V1, V2 : torch.Tensor, shape (..., Hk, m1, dv) and (..., Hk, m2, dv)
        CPU tensors, float32 or float64 (one dtype); grouped heads (H a multiple of Hk, query
        head h uses key/value head h // (H // Hk), as ``scaled_dot_product_attention(enable_gqa=True)``)
        and broadcasting as in :func:`tattn_numba.attention`.
    scale : float, optional
        Logit scale; ``None`` means ``1/d`` (as in :func:`tattn_numba.attention`).
    causal : bool
        Keep only pairs ``j1, j2 <= i`` (needs ``n == m1 == m2``).
    mask : tattn_numba.Mask, optional
        A general mask instead of ``causal`` (as in :func:`tattn_numba.attention`).
    window : (int, int), optional
        Causal sliding windows (as in :func:`tattn_numba.attention`).
    logits : {"trilinear", "determinant"}
        The logit form (as in :func:`tattn_numba.attention`).
    method : {"exact", "poly"}
        ``"poly"`` is the certified polynomial surrogate; pass ``degree=``, ``tol=``, ``family=``.
    **opts
        Method options, forwarded to :func:`tattn_numba.attention_forward`.

    Returns
    -------
    torch.Tensor, shape (..., H, n, dv)
        In the input dtype, differentiable with respect to all five operands (key and value
        gradients summed over each group of query heads).

    Raises
    ------
    TypeError, ValueError
        The core's errors for malformed input (naming the argument), and ``ValueError`` for
        tensors that are not on the CPU.

    Examples
    --------
    >>> import torch
    >>> from tattn_numba.torch import tensor_attention
    >>> Q, K1, K2, V1, V2 = (torch.randn(6, 3, dtype=torch.float64) for _ in range(5))
    >>> tensor_attention(Q, K1, K2, V1, V2, method="poly", degree=4).shape
    torch.Size([6, 3])
    """
    options = dict(opts, mask=mask, window=window, logits=logits)
    return TensorAttentionFunction.apply(Q, K1, K2, V1, V2, scale, causal, method, options)


class TensorAttention(nn.Module):
    """Multi-head tensor (2-simplicial) self-attention layer.

    ``x`` (batch, seq, embed_dim) is projected by ``W_Q`` (``nn.Linear(embed_dim, num_heads *
    head_dim)``) into query heads (batch, num_heads, seq, head_dim) and by ``W_K1``, ``W_K2``,
    ``W_V1``, ``W_V2`` (each ``nn.Linear(embed_dim, kv_heads * head_dim)``) into key/value heads
    (batch, kv_heads, seq, head_dim); the heads are leading dimensions handled by the core
    (grouped heads when ``kv_heads < num_heads``, without repeating K or V); the result is merged
    and mapped back by ``W_O`` (``nn.Linear(num_heads * head_dim, embed_dim)``).

    Parameters
    ----------
    embed_dim : int
    num_heads : int
    head_dim : int, optional
        Defaults to ``embed_dim // num_heads`` (then ``embed_dim`` must be divisible by ``num_heads``).
    kv_heads : int, optional
        Key/value heads (grouped-query attention; 1 is multi-query); ``num_heads`` must be a
        multiple. Defaults to ``num_heads``.
    method : {"exact", "poly"}
    causal : bool
    window : (int, int), optional
        Causal sliding windows (w1, w2) (as in :func:`tattn_numba.attention`).
    logits : {"trilinear", "determinant"}
        The logit form (as in :func:`tattn_numba.attention`).
    mask : tattn_numba.Mask, optional
        A general mask instead of ``causal``/``window`` (checked here, at construction).
    scale : float, optional
        ``None`` means ``1/head_dim`` (the core's default).
    bias : bool
        Whether the projections have a bias.
    **method_options
        Forwarded to the core (``degree``, ``tol``, ``family`` for ``"poly"``).

    Examples
    --------
    >>> import torch
    >>> from tattn_numba.torch import TensorAttention
    >>> layer = TensorAttention(8, num_heads=2, causal=True)
    >>> y = layer(torch.randn(2, 5, 8))
    >>> y.sum().backward()
    >>> layer.W_Q.weight.grad.shape
    torch.Size([8, 8])
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None, *, kv_heads: int | None = None,
                 method: str = "exact", causal: bool = False, window: tuple[int, int] | None = None,
                 logits: str = "trilinear", mask: Mask | None = None, scale: float | None = None, bias: bool = False,
                 **method_options: Any):
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; pass head_dim explicitly"
                )
            head_dim = embed_dim // num_heads
        if not isinstance(head_dim, int) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        kv_heads = num_heads if kv_heads is None else kv_heads
        if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads <= 0 or num_heads % kv_heads:
            raise ValueError(f"kv_heads must be a positive int dividing num_heads={num_heads}, got {kv_heads!r}")
        self.embed_dim, self.num_heads, self.head_dim, self.kv_heads = embed_dim, num_heads, head_dim, kv_heads
        self.mask = check_mask(mask, causal, window)
        self.logits = check_logits(logits)
        self.method, self.causal, self.scale = method, self.mask.causal, scale
        self.method_options = dict(method_options)
        inner, kv_inner = num_heads * head_dim, kv_heads * head_dim
        self.W_Q = nn.Linear(embed_dim, inner, bias=bias)
        self.W_K1 = nn.Linear(embed_dim, kv_inner, bias=bias)
        self.W_K2 = nn.Linear(embed_dim, kv_inner, bias=bias)
        self.W_V1 = nn.Linear(embed_dim, kv_inner, bias=bias)
        self.W_V2 = nn.Linear(embed_dim, kv_inner, bias=bias)
        self.W_O = nn.Linear(inner, embed_dim, bias=bias)

    def _heads(self, y: torch.Tensor, heads: int) -> torch.Tensor:
        b, s, _ = y.shape
        return y.view(b, s, heads, self.head_dim).transpose(1, 2).contiguous()

    def operands(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The five operands the layer hands to the core for ``x`` (batch, seq, embed_dim): Q of
        shape (batch, num_heads, seq, head_dim) and K1, K2, V1, V2 of shape
        (batch, kv_heads, seq, head_dim)."""
        q = self._heads(self.W_Q(x), self.num_heads)
        return (q,) + tuple(self._heads(W(x), self.kv_heads) for W in (self.W_K1, self.W_K2, self.W_V1, self.W_V2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape (batch, seq, embed_dim); returns the same shape."""
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"x must have shape (batch, seq, embed_dim={self.embed_dim}), got {tuple(x.shape)}")
        q, k1, k2, v1, v2 = self.operands(x)
        o = tensor_attention(q, k1, k2, v1, v2, scale=self.scale, mask=self.mask, logits=self.logits,
                             method=self.method, **self.method_options)
        b, h, s, hd = o.shape
        return self.W_O(o.transpose(1, 2).reshape(b, s, h * hd))

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"kv_heads={self.kv_heads}, method={self.method!r}, mask={self.mask.describe()!r}, "
                f"logits={self.logits!r}, scale={self.scale}")
