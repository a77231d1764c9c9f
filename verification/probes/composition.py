"""Binary relation composition: a second task whose label is a genuine three-way interaction.

Task (after the binary-relation-composition task of Kozachinskiy et al. 2025, "Strassen
attention", written as an edge list). Each token is an edge x_i = (a_i, b_i) ∈ [k]² drawn i.i.d.
uniform; the N edges form a relation R on [k]. The label of position i is

    y_i = 1  iff  (a_i, b_i) ∈ R∘R,  i.e. there are positions j, l with a_j = a_i, b_j = a_l, b_l = b_i,

j and l ranging over all positions (i included). Deciding it needs query i, edge j and edge l at
once: a_j = a_i ties i to j, b_l = b_i ties i to l, and b_j = a_l ties j to l; no pair of the
three decides it. Kozachinskiy et al. prove one layer of standard attention needs size growing
with the input for it, while third-order (and Strassen) attention solves it with one layer.

k. A pair (a_i, b_i) is composed with probability ≈ 1 − exp(−N²/k³), so k must grow like N^{2/3};
:func:`choose_alphabet` picks the k whose Monte Carlo positive rate is closest to ``target_rate``.

Existence (:func:`construction`): one tensor-attention head of width 7 with hand-set weights
solves the task exactly. With c_x = cos(2πx/k), s_x = sin(2πx/k) and unit weights on the
constant coordinates,

    Q_i  = β [c_{a_i}, s_{a_i}, 1, 1, c_{b_i}, s_{b_i}, τ/β]
    K1_j =   [c_{a_j}, s_{a_j}, c_{b_j}, s_{b_j}, 1, 1, 0]            V1_j = 1
    K2_l =   [1, 1, c_{a_l}, s_{a_l}, c_{b_l}, s_{b_l}, 0]            V2_l = 1

(scale 1), plus a null row e_7 in each key set with value 0, make every real logit
β[cos 2π(a_j − a_i)/k + cos 2π(b_j − a_l)/k + cos 2π(b_l − b_i)/k]: 3β for a witness, at most
β(2 + cos 2π/k) otherwise; the (null, null) pair has logit τ. As for Match3, the output exceeds
1/2 exactly on the positive rows once β > β_min = max(2 ln N / (1 − cos 2π/k), ln(2N)/3) and
e^τ + 2N sits between N² e^{β(2 + cos 2π/k)} and e^{3β}. The logit radius 3β grows only like
k² ln N ∝ N^{4/3} ln N here (Match3: N⁴ ln N).

The protocol (models, curriculum, seeds, "learns"): :mod:`verification.probes._training`; tokens
are embedded by Fourier features of a and of b (period k) and a learned linear map.

CLI: ``python -m verification.probes.composition --config quick --out DIR``.
"""

from __future__ import annotations

import functools
import math
import sys

import numpy as np

from . import _results, _training
from ._training import SKIPPED

__all__ = [
    "PRESETS",
    "SKIPPED",
    "TASK",
    "beta_min",
    "choose_alphabet",
    "construction",
    "construction_accuracy",
    "generate",
    "labels",
    "main",
    "positive_rate",
    "render",
    "run",
    "train_run",
]

_COMMON = {"embed_dim": 16, "num_heads": 2, "head_dim": 4, "fourier": 2, "hidden": 32, "lr": 0.01,
           "target_rate": 0.5, "cap_epsilon": 0.05, "learn_margin": 0.1, "param_matched": True,
           "curriculum": True, "pairwise_layers": [1, 2, 4], "torch_threads": 1}
PRESETS = {
    "tiny": {**_COMMON, "Ns": [6], "steps": 40, "batch": 16, "eval_size": 64, "eval_every": 20, "seeds": [0],
             "poly_degrees": [], "poly_stages": 0, "poly_steps": 1, "pairwise_layers": [1],
             "param_matched": False, "construction_sequences": 16},
    "quick": {**_COMMON, "Ns": [8, 12], "steps": 300, "batch": 32, "eval_size": 256, "eval_every": 300,
              "seeds": [0], "poly_degrees": [], "poly_stages": 0, "poly_steps": 1, "pairwise_layers": [1],
              "param_matched": False, "construction_sequences": 64},
    # medium: the committed results (docs/composition/), about 20 min on one core
    "medium": {**_COMMON, "Ns": [8, 12, 16, 24, 32], "steps": 1000, "batch": 32, "eval_size": 1024,
               "eval_every": 250, "seeds": [0, 1, 2], "poly_degrees": [2, 4, 6], "poly_stages": 2,
               "poly_steps": 600, "construction_sequences": 256},
    # longer lengths for the tensor layer and the one-layer pairwise baselines only (no surrogate)
    "medium_long": {**_COMMON, "Ns": [8, 12, 16, 24, 32, 48, 64], "steps": 1000, "batch": 32, "eval_size": 1024,
                    "eval_every": 500, "seeds": [0, 1, 2], "poly_degrees": [], "poly_stages": 0, "poly_steps": 1,
                    "pairwise_layers": [1], "construction_sequences": 128},
    "full": {**_COMMON, "Ns": [8, 12, 16, 24, 32, 48], "steps": 3000, "batch": 64, "eval_size": 2048,
             "eval_every": 500, "seeds": [0, 1, 2, 3, 4], "poly_degrees": [2, 4, 6, 8], "poly_stages": 3,
             "poly_steps": 2000, "construction_sequences": 1024},
}
TITLE = "Relation composition: tensor attention against pairwise attention"
_WIDTH = 7


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def labels(x: np.ndarray, k: int) -> np.ndarray:
    """Labels (..., N) of edge lists ``x`` (..., N, 2) over [k]: y_i = 1 iff (a_i, b_i) ∈ R∘R.

    Vectorised through the adjacency matrix: O(B·(N + k³))."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim < 2 or x.shape[-1] != 2:
        raise ValueError(f"x must have shape (..., N, 2), got {x.shape}")
    flat = x.reshape(-1, x.shape[-2], 2) % k
    B, N = flat.shape[:2]
    adj = np.zeros((B, k, k))  # float64: the path counts (≤ N²) are exact, and the product uses BLAS
    adj[np.repeat(np.arange(B), N), flat[..., 0].reshape(-1), flat[..., 1].reshape(-1)] = 1.0
    composed = (adj @ adj) > 0.5
    y = composed[np.arange(B)[:, None], flat[..., 0], flat[..., 1]]
    return y.reshape(x.shape[:-1]).astype(np.int64)


def generate(N: int, k: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` edge lists of N edges uniform in [k]² (int64, (size, N, 2)) and their labels (size, N)."""
    x = rng.integers(0, k, size=(size, N, 2), dtype=np.int64)
    return x, labels(x, k)


def positive_rate(N: int, k: int, samples: int = 2000, seed: int = 0) -> float:
    """Monte Carlo positive rate at (N, k) with a fixed seed."""
    return float(generate(N, k, samples, np.random.default_rng([seed, N, k]))[1].mean())


@functools.cache
def choose_alphabet(N: int, target_rate: float = 0.5) -> int:
    """The k (≥ 2) whose positive rate is closest to ``target_rate`` (the rate falls with k)."""
    if N < 1:
        raise ValueError(f"N must be a positive int, got {N!r}")
    candidates = range(2, max(4, int(3 * N ** (2 / 3)) + 3))
    return min(candidates, key=lambda k: abs(positive_rate(N, k) - target_rate))


def _features(x, k: int, fourier: int):
    return _training.torch.cat([_training.fourier_features(x[..., 0], k, fourier),
                                _training.fourier_features(x[..., 1], k, fourier)], dim=-1)


TASK = _training.Task(name="composition", param=choose_alphabet, generate=generate, features=_features,
                      feature_dim=lambda fourier: 4 * fourier)


# --------------------------------------------------------------------------------------------
# existence: a hand-set head (exact kernel)
# --------------------------------------------------------------------------------------------

def beta_min(N: int, k: int) -> float:
    """max(2 ln N / (1 − cos 2π/k), ln(2N)/3): below it no τ separates a single witness from N²
    near misses, or from the 2N mixed real/null pairs."""
    return max(2.0 * math.log(max(N, 1)) / (1.0 - math.cos(2.0 * math.pi / k)), math.log(2.0 * N) / 3.0)


def construction(N: int, k: int, margin: float = 1.05) -> dict:
    """β = ``margin``·β_min and τ with e^τ + 2N at the geometric mean of e^{3β} and the strongest miss."""
    beta = margin * beta_min(N, k)
    c = math.cos(2.0 * math.pi / k)
    log_2n = math.log(2.0 * N)
    log_t = 0.5 * (3 * beta + max(2.0 * math.log(N) + beta * (2 + c), log_2n))
    ratio = math.exp(log_2n - log_t)
    tau = log_t + math.log1p(-ratio) if ratio < 1.0 else -50.0
    return {"N": N, "k": k, "beta": beta, "tau": tau, "beta_min": beta_min(N, k),
            "logit_radius": max(3 * beta, abs(tau))}


def operands(x: np.ndarray, k: int, beta: float, tau: float):
    """(Q, K1, K2, V1, V2) of the hand-set head for edge lists ``x`` (..., N, 2); keys and values
    carry a null row last. float64; use with ``scale=1``."""
    x = np.asarray(x, dtype=np.int64) % k
    ang = 2.0 * np.pi * x / k
    ca, sa, cb, sb = np.cos(ang[..., 0]), np.sin(ang[..., 0]), np.cos(ang[..., 1]), np.sin(ang[..., 1])
    one, zero = np.ones_like(ca), np.zeros_like(ca)
    Q = np.stack([beta * ca, beta * sa, beta * one, beta * one, beta * cb, beta * sb, tau * one], axis=-1)
    null = np.zeros(x.shape[:-2] + (1, _WIDTH))
    null[..., -1] = 1.0
    K1 = np.concatenate([np.stack([ca, sa, cb, sb, one, one, zero], axis=-1), null], axis=-2)
    K2 = np.concatenate([np.stack([one, one, ca, sa, cb, sb, zero], axis=-1), null], axis=-2)
    V = np.concatenate([np.ones(x.shape[:-1] + (1,)), np.zeros(x.shape[:-2] + (1, 1))], axis=-2)
    return Q, K1, K2, V, V.copy()


def construction_accuracy(N: int, k: int, sequences: int, seed: int = 0) -> dict:
    """Rows of random edge lists (seeded) the hand-set head classifies correctly (exact kernel)."""
    import tattn_numba as ta

    con = construction(N, k)
    x, y = generate(N, k, sequences, np.random.default_rng([seed, N, 3]))
    out = ta.attention(*operands(x, k, con["beta"], con["tau"]), scale=1.0, method="exact")[..., 0]
    return {**con, "rows": int(y.size), "rows_correct": int(np.sum((out > 0.5) == (y == 1)))}


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------

def train_run(name: str, seed: int, settings: dict) -> dict:
    """One curriculum of model ``name`` with ``seed`` (a top-level task for the executor)."""
    return _training.train_curriculum(TASK, name, seed, settings)


def run(settings: dict, executor) -> dict:
    """The hand-set head's accuracy per N (numpy and the exact kernel), then every trained model."""
    sequences = settings.get("construction_sequences")
    if not isinstance(sequences, int) or sequences < 1:
        raise ValueError(f"construction_sequences must be a positive int, got {sequences!r}")
    _training.check_settings(settings)
    rows = [executor.submit(construction_accuracy, N, choose_alphabet(N, settings["target_rate"]), sequences)
            for N in settings["Ns"]]
    rows = [f.result() for f in rows]
    failures = [f"N={r['N']}, k={r['k']}: the hand-set head misclassified {r['rows'] - r['rows_correct']} of "
                f"{r['rows']} rows" for r in rows if r["rows_correct"] != r["rows"]]
    results = _training.run_task(TASK, train_run, settings, executor)
    results["construction"] = rows
    results["failures"] = failures + results["failures"]
    return results


def _construction_text(rows: list[dict]) -> str:
    return ("Existence: the hand-set width-7 head (module docstring) classifies "
            + ", ".join(f"{r['rows_correct']}/{r['rows']} rows at N = {r['N']} (k = {r['k']}, logit radius "
                        f"{r['logit_radius']:.0f})" for r in rows) + " of random edge lists correctly.")


def render(results: dict, out_dir) -> list[dict]:
    """Write ``composition.png`` (and ``composition_surrogate.png``) into ``out_dir``; return the sections."""
    if "skipped" in results:
        return _results.render_task(results, out_dir, "composition", TITLE, "")
    s = results["settings"]
    ks = ", ".join(f"{N}: {choose_alphabet(N, s['target_rate'])}" for N in s["Ns"])
    setup = (f"Per-position held-out accuracy on binary relation composition (N edges over [k], k per N for a "
             f"positive rate near {s['target_rate']}: {ks}) {_results.schedule(s)}, {len(s['seeds'])} seed(s), "
             "mean and min–max; all "
             f"models share the width (D = {s['embed_dim']}, {s['num_heads']} heads of width {s['head_dim']}), the "
             f"embedding and the readout. {_construction_text(results['construction'])}")
    return _results.render_task(results, out_dir, "composition", TITLE, setup)


def main(argv=None) -> int:
    """Command line: ``--config NAME --out DIR``."""
    return _results.cli("composition", PRESETS, run, render, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
