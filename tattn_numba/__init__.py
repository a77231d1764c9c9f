"""tattn_numba: tensor (2-simplicial) attention, exact and fast.

Public API
----------
attention, attention_grad, attention_forward, attention_backward
    Tensor attention and its gradient (exact streaming Numba kernels).
AttentionGrads, AttentionState
    Result types.
Mask
    Which key pairs each query row sees (``causal=True`` is ``mask=Mask(causal=True)``).
poly_plan, poly_gradient_bounds
    The polynomial surrogate's plan and certificates (``method="poly"``).
paper
    The training problem of Liang–Shi–Song–Zhou (2024): loss, closed-form dLoss/dX, dLoss/dY.
config
    Settings read once at import (fast-math flags, tile sizes, memory budget, CUDA launch sizes).
CUDAUnavailableError
    Raised for ``device="cuda"`` when numba-cuda or a usable NVIDIA GPU is missing.
"""

from . import config, paper
from ._cuda import CUDAUnavailableError
from .attention import (
    AttentionGrads,
    AttentionState,
    attention,
    attention_backward,
    attention_forward,
    attention_grad,
)
from .mask import Mask
from .nway import (
    NwayGrads,
    NwayState,
    nway_attention,
    nway_attention_backward,
    nway_attention_forward,
    nway_attention_grad,
    nway_poly_gradient_bounds,
    nway_poly_plan,
)
from .poly.api import poly_gradient_bounds, poly_plan

__version__ = "0.1.0"

__all__ = [
    "AttentionGrads",
    "AttentionState",
    "CUDAUnavailableError",
    "Mask",
    "NwayGrads",
    "NwayState",
    "attention",
    "attention_backward",
    "attention_forward",
    "attention_grad",
    "config",
    "nway_attention",
    "nway_attention_backward",
    "nway_attention_forward",
    "nway_attention_grad",
    "nway_poly_gradient_bounds",
    "nway_poly_plan",
    "paper",
    "poly_gradient_bounds",
    "poly_plan",
]

