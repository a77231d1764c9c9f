"""A first look at tensor attention: exact forward and gradient, checked on a small problem.

Run: ``python examples/quickstart.py``. Prints the output shape, the row log-normaliser,
the gradient norms, and the agreement of the streaming kernel with a dense evaluation.
"""

import time

import numpy as np

import tattn_numba as ta


def dense_output(Q, K1, K2, V1, V2, scale):
    """The full n×m1×m2 evaluation, for comparison at a small size."""
    logits = scale * np.einsum("il,jl,kl->ijk", Q, K1, K2)
    weights = np.exp(logits - logits.max(axis=(1, 2), keepdims=True))
    weights /= weights.sum(axis=(1, 2), keepdims=True)
    return np.einsum("ijk,jm,km->im", weights, V1, V2)


def main() -> None:
    rng = np.random.default_rng(0)
    n, m1, m2, d, dv = 96, 80, 64, 16, 8
    Q = rng.uniform(-1, 1, (n, d))
    K1, K2 = rng.uniform(-1, 1, (m1, d)), rng.uniform(-1, 1, (m2, d))
    V1, V2 = rng.standard_normal((m1, dv)), rng.standard_normal((m2, dv))

    start = time.perf_counter()
    O, state = ta.attention_forward(Q, K1, K2, V1, V2)
    grads = ta.attention_backward(state, np.ones_like(O))
    elapsed = time.perf_counter() - start

    error = np.abs(O - dense_output(Q, K1, K2, V1, V2, 1.0 / d)).max()
    print(f"tensor attention: n={n}, m1={m1}, m2={m2}, d={d}, dv={dv} (first call includes JIT compilation)")
    print(f"  output {O.shape}, lse range [{state.lse.min():.3f}, {state.lse.max():.3f}]")
    for name, g in zip(grads._fields, grads):
        print(f"  |{name}| = {np.linalg.norm(g):.4e}")
    print(f"  max |O - dense O| = {error:.2e}   ({elapsed:.2f} s)")
    if not error < 1e-12:
        raise SystemExit("streaming and dense outputs disagree")


if __name__ == "__main__":
    main()
