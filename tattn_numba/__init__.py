"""tattn_numba: tensor (2-simplicial) attention, exact and fast.

Public API
----------
attention, attention_grad, attention_forward, attention_backward
    Tensor attention and its gradient (exact streaming Numba kernels).
AttentionGrads, AttentionState
    Result types.
paper
    The training problem of Liang–Shi–Song–Zhou (2024): loss, closed-form dLoss/dX, dLoss/dY.
config
    Settings read once at import (fast-math flags, tile sizes, memory budget).
"""

from . import config, paper
from .attention import (
    AttentionGrads,
    AttentionState,
    attention,
    attention_backward,
    attention_forward,
    attention_grad,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionGrads",
    "AttentionState",
    "attention",
    "attention_backward",
    "attention_forward",
    "attention_grad",
    "config",
    "paper",
]

