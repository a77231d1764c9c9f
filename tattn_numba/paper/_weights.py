"""The five weight matrices ↔ the two parameters X, Y: :func:`build_X`, :func:`build_Y` and the chain rule.

X = W_Q (W_K1 ⊘ W_K2)^T (d×d²) and Y = W_V1 ⊘ W_V2 (d²×d), ``⊘`` the column-wise Khatri–Rao
product (``tensorly.tenalg.khatri_rao``), pair index ``pair(b, c) = b·d + c``.
"""

from __future__ import annotations

import numpy as np

from ._common import check_weights, khatri_rao_product


def build_X(W_Q, W_K1, W_K2) -> np.ndarray:
    """The query–key parameter ``X = W_Q (W_K1 ⊘ W_K2)^T`` of Liang–Shi–Song–Zhou (2024).

    Parameters
    ----------
    W_Q, W_K1, W_K2 : array_like, shape (d, d)
        float32 or float64 (one dtype for all), finite.

    Returns
    -------
    X : ndarray, shape (d, d²), input dtype
        ``X[a, pair(b, c)] = Σ_l W_Q[a, l] W_K1[b, l] W_K2[c, l]`` with ``pair(b, c) = b·d + c``.

    Raises
    ------
    TypeError
        Non-array, non-float or mixed dtypes.
    ValueError
        Non-square or mismatched shapes, empty arrays, NaN/Inf.

    Notes
    -----
    ``⊘`` is ``tensorly.tenalg.khatri_rao``. Time O(d⁴), memory O(d³). With it,
    ``A1 X (A2 ⊗ A3)^T = Q (K1 ⊘ K2)^T`` for Q = A1 W_Q, K1 = A2 W_K1, K2 = A3 W_K2 (SPEC §3).
    """
    (wq, wk1, wk2), dtype = check_weights({"W_Q": W_Q, "W_K1": W_K1, "W_K2": W_K2}, None, None)
    X = wq.astype(np.float64) @ khatri_rao_product(wk1.astype(np.float64), wk2.astype(np.float64)).T
    return X.astype(dtype, copy=False)


def build_Y(W_V1, W_V2) -> np.ndarray:
    """The value parameter ``Y = W_V1 ⊘ W_V2`` of Liang–Shi–Song–Zhou (2024).

    Parameters
    ----------
    W_V1, W_V2 : array_like, shape (d, d)
        float32 or float64 (one dtype for both), finite.

    Returns
    -------
    Y : ndarray, shape (d², d), input dtype
        ``Y[pair(b, c), m] = W_V1[b, m] W_V2[c, m]`` with ``pair(b, c) = b·d + c``.

    Raises
    ------
    TypeError, ValueError
        As for :func:`build_X`.

    Notes
    -----
    Time and memory O(d³). ``(A4 ⊗ A5) Y = (A4 W_V1) ⊘ (A5 W_V2) = V1 ⊘ V2`` (SPEC §4, I2).
    """
    (wv1, wv2), dtype = check_weights({"W_V1": W_V1, "W_V2": W_V2}, None, None)
    return khatri_rao_product(wv1.astype(np.float64), wv2.astype(np.float64)).astype(dtype, copy=False)


def chain_rule(dX, dY, wq, wk1, wk2, wv1, wv2):
    """Weight gradients from G = dLoss/dX (d, d²) and H = dLoss/dY (d², d) (see ``weight_grads``).

    Linear in (G, H) with coefficients from the weights, so with G, H replaced by entrywise
    error bounds and the weights by their absolute values it returns entrywise error bounds.
    Time O(d⁴).
    """
    d = wq.shape[0]
    G = dX.reshape(d, d, d)  # G[a, b, c]
    H = dY.reshape(d, d, d)  # H[b, c, m]
    dWQ = dX @ khatri_rao_product(wk1, wk2)
    dWK1 = G.transpose(1, 0, 2).reshape(d, d * d) @ khatri_rao_product(wq, wk2)
    dWK2 = G.transpose(2, 0, 1).reshape(d, d * d) @ khatri_rao_product(wq, wk1)
    dWV1 = np.einsum("bcm,cm->bm", H, wv2)
    dWV2 = np.einsum("bcm,bm->cm", H, wv1)
    return dWQ, dWK1, dWK2, dWV1, dWV2
