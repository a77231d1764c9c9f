"""The competitor: tensor attention written densely with NumPy, as a user would first write it.

Forms the full (n, m1, m2) logit tensor with an optimised ``np.einsum`` path, so it costs
Θ(n·m1·m2) memory; used only as the speed baseline of the benchmarks (the tests keep their own
plain reference).
"""

from __future__ import annotations

import numpy as np


def forward(Q, K1, K2, V1, V2, scale):
    """Return (O, P) for one unbatched problem; P is the (n, m1, m2) attention tensor."""
    logits = np.einsum("il,jl,kl->ijk", scale * Q, K1, K2, optimize=True)
    logits -= logits.max(axis=(1, 2), keepdims=True)
    P = np.exp(logits, out=logits)
    P /= P.sum(axis=(1, 2), keepdims=True)
    O = np.einsum("ijk,jm,km->im", P, V1, V2, optimize=True)
    return O, P


def forward_backward(Q, K1, K2, V1, V2, dO, scale):
    """Output and the five gradients of SPEC §2, densely."""
    O, P = forward(Q, K1, K2, V1, V2, scale)
    delta = np.einsum("im,im->i", dO, O)
    dS = np.einsum("im,jm,km->ijk", dO, V1, V2, optimize=True)
    dS -= delta[:, None, None]
    dZ = np.multiply(P, dS, out=dS)
    dQ = scale * np.einsum("ijk,jl,kl->il", dZ, K1, K2, optimize=True)
    dK1 = scale * np.einsum("ijk,il,kl->jl", dZ, Q, K2, optimize=True)
    dK2 = scale * np.einsum("ijk,il,jl->kl", dZ, Q, K1, optimize=True)
    dV1 = np.einsum("ijk,im,km->jm", P, dO, V2, optimize=True)
    dV2 = np.einsum("ijk,im,jm->km", P, dO, V1, optimize=True)
    return O, (dQ, dK1, dK2, dV1, dV2)
