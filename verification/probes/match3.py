"""Match3 (Sanford–Hsu–Telgarsky 2023): a tensor-attention layer against pairwise attention stacks.

Task. Inputs x_1..x_N drawn i.i.d. uniform from Z_M; the label of position i is
``y_i = 1`` iff there are indices j, k in {1..N} with ``x_i + x_j + x_k ≡ 0 (mod M)``. j and k
range over *all* positions: they may equal i and each other (the paper's "some j1, j2 ∈ [N]";
it is also exactly the set of pairs a non-causal tensor-attention layer attends over).

M. With N² ordered pairs, P(y_i = 1) ≈ 1 − exp(−N²/(2M)), so labels are almost all 1 unless M
grows like N². :func:`choose_modulus` picks, per N, the M whose Monte Carlo positive rate (fixed
seed, 2000 sequences) is closest to ``target_rate`` (default 0.5) by bisection; M ≈ 0.7·N².

Models, curriculum, seeds and the definition of "learns": :mod:`verification.probes._training`.
Tokens are embedded by Fourier features [cos(2πt·x/M), sin(2πt·x/M)], t = 1..F, and a learned
linear map; no position embedding (Match3 is a set task), so the weights carry across stages
whose M differ (the features depend on x/M only).

Settings: the keys of :data:`PRESETS` (checked by :func:`_training.check_settings`): ``Ns`` the
curriculum, ``steps`` per stage, ``seeds``, ``poly_degrees`` (surrogate models), ``poly_stages`` and
``poly_steps`` (their stages and steps), ``pairwise_layers`` and ``param_matched`` (baselines).

CLI: ``python -m verification.match3 --config quick --out DIR`` (or ``python -m
verification.probes.match3``) writes ``match3.png``, ``match3_surrogate.png``, ``match3.md`` and
``results.json`` into DIR.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from . import _results, _training
from ._training import SKIPPED, radius_cap

__all__ = [
    "PRESETS",
    "SKIPPED",
    "TASK",
    "choose_modulus",
    "generate",
    "labels",
    "main",
    "positive_rate",
    "radius_cap",
    "render",
    "run",
    "table",
    "train_run",
]

_COMMON = {"embed_dim": 16, "num_heads": 2, "head_dim": 4, "fourier": 3, "hidden": 32, "lr": 0.01,
           "target_rate": 0.5, "cap_epsilon": 0.05, "learn_margin": 0.1, "param_matched": True,
           "curriculum": True, "pairwise_layers": [1, 2, 4], "torch_threads": 1}
PRESETS = {
    "tiny": {**_COMMON, "Ns": [6], "steps": 60, "batch": 16, "eval_size": 64, "eval_every": 30, "seeds": [0],
             "poly_degrees": [4], "poly_stages": 1, "poly_steps": 20, "pairwise_layers": [1, 2]},
    # quick: a smoke run of the protocol, no more training steps than the former one-seed quick preset
    # (two seeds, 500 steps per stage; one-layer baseline only; the surrogate at N = 6 for 150 steps)
    "quick": {**_COMMON, "Ns": [6, 8], "steps": 500, "batch": 32, "eval_size": 384, "eval_every": 250,
              "seeds": [0, 1], "poly_degrees": [6], "poly_stages": 1, "poly_steps": 150, "param_matched": False,
              "pairwise_layers": [1]},
    # medium: the committed results (docs/match3/), about 25 min on one core
    "medium": {**_COMMON, "Ns": [6, 8, 12, 16, 24], "steps": 1000, "batch": 32, "eval_size": 1024,
               "eval_every": 250, "seeds": [0, 1, 2], "poly_degrees": [2, 4, 6], "poly_stages": 2,
               "poly_steps": 600},
    # the control: the medium budget per N, but every N from a fresh initialisation (no poly, L1 and L4)
    "medium_control": {**_COMMON, "Ns": [6, 8, 12, 16, 24], "steps": 1000, "batch": 32, "eval_size": 1024,
                       "eval_every": 250, "seeds": [0, 1, 2], "poly_degrees": [], "poly_stages": 0, "poly_steps": 1,
                       "pairwise_layers": [1, 4], "param_matched": False, "curriculum": False},
    # three times the medium budget per stage, for the tensor layer and the one-layer pairwise baselines
    "medium_long": {**_COMMON, "Ns": [6, 8, 12, 16, 24], "steps": 3000, "batch": 32, "eval_size": 1024,
                    "eval_every": 1000, "seeds": [0, 1, 2], "poly_degrees": [], "poly_stages": 0, "poly_steps": 1,
                    "pairwise_layers": [1]},
    "full": {**_COMMON, "Ns": [6, 8, 12, 16, 24, 32], "steps": 3000, "batch": 64, "eval_size": 2048,
             "eval_every": 500, "seeds": [0, 1, 2, 3, 4], "poly_degrees": [2, 4, 6, 8], "poly_stages": 3,
             "poly_steps": 2000},
}
TITLE = "Match3: tensor attention against pairwise attention"
# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def labels(x: np.ndarray, M: int) -> np.ndarray:
    """Match3 labels of integer sequences ``x`` (..., N) in Z_M: y_i = 1 iff ∃ j, k (any, i and
    j = k allowed) with x_i + x_j + x_k ≡ 0 mod M. Vectorised: O(B·(N² + M))."""
    x = np.asarray(x, dtype=np.int64)
    flat = x.reshape(-1, x.shape[-1]) % M
    B = flat.shape[0]
    sums = (flat[:, :, None] + flat[:, None, :]) % M          # (B, N, N) pair sums
    present = np.zeros((B, M), dtype=bool)
    present[np.repeat(np.arange(B), sums.shape[1] * sums.shape[2]), sums.reshape(-1)] = True
    need = (-flat) % M
    y = np.take_along_axis(present, need, axis=1)
    return y.reshape(x.shape).astype(np.int64)


def generate(N: int, M: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` sequences of length N, uniform in Z_M, and their labels (both int64, (size, N))."""
    x = rng.integers(0, M, size=(size, N), dtype=np.int64)
    return x, labels(x, M)


def positive_rate(N: int, M: int, samples: int = 2000, seed: int = 0) -> float:
    """Monte Carlo positive rate of Match3 at (N, M) with a fixed seed."""
    return float(generate(N, M, samples, np.random.default_rng([seed, N, M]))[1].mean())


def choose_modulus(N: int, target_rate: float = 0.5, samples: int = 2000) -> int:
    """The M (≥ 3) whose positive rate is closest to ``target_rate`` (bisection; rate falls with M)."""
    lo, hi = 3, max(8, 4 * N * N)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if positive_rate(N, mid, samples) > target_rate:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda m: abs(positive_rate(N, m, samples) - target_rate))


@functools.cache
def _modulus(N: int, target_rate: float) -> int:
    return choose_modulus(N, target_rate)


def _features(x, M: int, fourier: int):
    return _training.fourier_features(x, M, fourier)


TASK = _training.Task(name="match3", param=_modulus, generate=generate, features=_features,
                      feature_dim=lambda fourier: 2 * fourier)


def train_run(name: str, seed: int, settings: dict) -> dict:
    """One curriculum of model ``name`` with ``seed`` (a top-level task for the executor)."""
    return _training.train_curriculum(TASK, name, seed, settings)


def run(settings: dict, executor) -> dict:
    """Train every model with every seed (see :mod:`verification.probes._training`)."""
    return _training.run_task(TASK, train_run, settings, executor)


def table(results: dict) -> str:
    """Markdown table: accuracy mean [min, max] per model and N, parameters, largest N learned, step time."""
    return _results.table(results)


def _setup(results: dict) -> str:
    s = results["settings"]
    Ms = ", ".join(f"{N}: {_modulus(N, s['target_rate'])}" for N in s["Ns"])
    return (f"Held-out per-position accuracy on Match3 (M per N for a positive rate near {s['target_rate']}: {Ms}) "
            f"{_results.schedule(s)}, "
            f"{len(s['seeds'])} seed(s), mean and min–max; held-out set {s['eval_size']} sequences per N. All "
            f"models share the width (D = {s['embed_dim']}, {s['num_heads']} heads of width {s['head_dim']}), the "
            "token embedding and the MLP readout; the table gives each one's parameter count.")


def render(results: dict, out_dir) -> list[dict]:
    """Write ``match3.png`` (and ``match3_surrogate.png``) into ``out_dir``; return the sections."""
    setup = "" if "skipped" in results else _setup(results)
    return _results.render_task(results, out_dir, "match3", TITLE, setup)


def main(argv=None) -> int:
    """Command line: ``--config NAME --out DIR``."""
    return _results.cli("match3", PRESETS, run, render, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    sys.exit(main())
